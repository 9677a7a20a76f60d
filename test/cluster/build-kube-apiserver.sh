#!/usr/bin/env bash
# Builds a real kube-apiserver from Go modules (no GitHub download) into ~/.cache/govloop/bin, for
# test/cluster/kubernetes-apiserver.test.ts. etcd comes from Debian: `apt-get install etcd-server`.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` fails: k8s.io/kubernetes's go.mod replaces
# its staging modules (k8s.io/api, k8s.io/apiserver, …) with ./staging paths that are not in the
# module zip. A throwaway main module that requires k8s.io/kubernetes and replaces each staging
# module with its published v0.<minor>.<patch> release builds the same binary.
# About 6 minutes on 2 cores with an empty build cache; ~150 MB binary.
set -euo pipefail
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
OUT="${OUT:-$HOME/.cache/govloop/bin/kube-apiserver}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" > dl.json
gomod="$(go env GOMODCACHE)/k8s.io/kubernetes@${K8S_VERSION}/go.mod"
goline="$(grep -m1 '^go ' "$gomod")"
{
  echo 'module kas'
  echo
  echo "$goline"
  echo
  grep -m1 '^godebug' "$gomod" || true
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo 'replace ('
  grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk -v v="$STAGING_VERSION" '{print "\t"$1" => "$1" "v}'
  echo ')'
} > go.mod
printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' > main.go
go mod tidy
mkdir -p "$(dirname "$OUT")"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
go build -ldflags "-X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
  -o "$OUT" k8s.io/kubernetes/cmd/kube-apiserver
"$OUT" --version
