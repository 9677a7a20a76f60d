#!/usr/bin/env bash
# Builds a real temporal-server and its temporal-sql-tool from Go modules (no GitHub download) into
# ~/.cache/govloop/bin, and copies the PostgreSQL schema that ships in the same module to
# ~/.cache/govloop/temporal-schema-<version>, for runtime/temporal-server.ts and
# test/temporal/production-server.test.ts (issue 13).
#
# go.temporal.io/server's go.mod has no replace directives, so `go install pkg@version` builds the
# released binaries as they are (the same module version the Temporal CLI builds against). The
# install goes to a temporary GOBIN outside the repo and the binaries are then renamed: the packages
# are cmd/server and cmd/tools/sql, so `go install` would name them `server` and `sql`.
# Pure Go (CGO_ENABLED=0): the PostgreSQL driver is pgx/lib/pq, the SQLite plugin is modernc.
# About 28 minutes on 2 cores shared with two other Go builds and test runs (load average ~20), with
# an empty build cache; less on an idle machine. Binaries: ~127 MB (server) and ~57 MB (sql tool).
set -euo pipefail
TEMPORAL_SERVER_VERSION="${TEMPORAL_SERVER_VERSION:-v1.29.1}"
BIN_DIR="${BIN_DIR:-$HOME/.cache/govloop/bin}"
SCHEMA_DIR="${SCHEMA_DIR:-$HOME/.cache/govloop/temporal-schema-${TEMPORAL_SERVER_VERSION}}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-trimpath CGO_ENABLED=0 GOBIN="$work/bin"
"$GO" mod download -json "go.temporal.io/server@${TEMPORAL_SERVER_VERSION}" > dl.json
moddir="$("$GO" env GOMODCACHE)/go.temporal.io/server@${TEMPORAL_SERVER_VERSION}"
"$GO" install "go.temporal.io/server/cmd/server@${TEMPORAL_SERVER_VERSION}" \
  "go.temporal.io/server/cmd/tools/sql@${TEMPORAL_SERVER_VERSION}"
mkdir -p "$BIN_DIR"
# Copy then rename, so a concurrent reader never sees a half-written binary under the final name.
install -m 0755 "$GOBIN/server" "$BIN_DIR/.temporal-server.tmp"
install -m 0755 "$GOBIN/sql" "$BIN_DIR/.temporal-sql-tool.tmp"
# The schema files (versioned migrations included) for the postgres12 plugin.
rm -rf "$SCHEMA_DIR.tmp"
mkdir -p "$SCHEMA_DIR.tmp"
cp -r "$moddir/schema/postgresql/v12/temporal" "$moddir/schema/postgresql/v12/visibility" "$SCHEMA_DIR.tmp/"
chmod -R u+w "$SCHEMA_DIR.tmp"
rm -rf "$SCHEMA_DIR"
mv "$SCHEMA_DIR.tmp" "$SCHEMA_DIR"
mv "$BIN_DIR/.temporal-sql-tool.tmp" "$BIN_DIR/temporal-sql-tool"
mv "$BIN_DIR/.temporal-server.tmp" "$BIN_DIR/temporal-server"
"$BIN_DIR/temporal-server" --version
"$BIN_DIR/temporal-sql-tool" --version
