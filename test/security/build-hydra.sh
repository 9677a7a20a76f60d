#!/usr/bin/env bash
# Builds a real ory hydra (OAuth2/OIDC provider) from Go modules (no GitHub download) into
# ~/.cache/govloop/bin, for test/security/oidc.test.ts (see test/support/hydra.ts).
#
# `go install github.com/ory/hydra/v2@v2.3.0` and a bare `go get -tool` build a hydra that does not
# compile ("p.conn.Store.SQLDB undefined"): hydra's go.mod replaces github.com/gobuffalo/pop/v6 with
# ory's fork, and a dependency's replace directives are ignored. A throwaway main module that
# carries the same (non-local) replace directives builds the released binary. The other replace,
# hydra-client-go => ./internal/httpclient, is a local path not in the module zip; the published
# hydra-client-go release hydra requires (v2.2.1) is used instead.
# The tests run hydra with DSN=memory (in-memory SQLite). SQLite support is behind build tags, as
# in hydra's Makefile (`-tags sqlite,sqlite_omit_load_extension`), and its driver (mattn/go-sqlite3)
# is cgo: CGO_ENABLED=1 and a C compiler (gcc) are needed. Without the tag hydra starts but refuses
# DSN=memory.
# About 2 minutes on 2 cores with a warm module cache; ~60 MB binary.
set -euo pipefail
HYDRA_VERSION="${HYDRA_VERSION:-v2.3.0}"
OUT="${OUT:-$HOME/.cache/govloop/bin/hydra}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init hydrabuild >/dev/null 2>&1
go mod download -json "github.com/ory/hydra/v2@${HYDRA_VERSION}" > dl.json
gomod="$(go env GOMODCACHE)/github.com/ory/hydra/v2@${HYDRA_VERSION}/go.mod"
# hydra's single-line `replace old [ver] => new ver` directives (local `=> ./path` ones are skipped).
grep -E '^replace [^ ]+ (v[^ ]+ )?=> [^ .][^ ]* v[^ ]+\s*$' "$gomod" \
  | awk '{ if (NF == 5) print $2 "=" $4 "@" $5; else print $2 "@" $3 "=" $5 "@" $6 }' \
  | while read -r r; do echo "replace $r"; go mod edit -replace="$r"; done
go get -tool "github.com/ory/hydra/v2@${HYDRA_VERSION}"
mkdir -p "$(dirname "$OUT")"
CGO_ENABLED=1 go build -tags sqlite,sqlite_omit_load_extension \
  -ldflags "-X github.com/ory/hydra/v2/driver/config.Version=${HYDRA_VERSION}" \
  -o "$OUT" github.com/ory/hydra/v2
"$OUT" version
