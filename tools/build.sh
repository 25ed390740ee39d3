#!/usr/bin/env bash
# Builds the control-plane binaries the e2e tests and the demo need into
# bin/ (git-ignored), from the pinned modules under tools/. A binary is
# rebuilt only when its module's go.mod or go.sum changed since it was
# built: the first build takes ~11 minutes on 2 cores (helm ~3 of them),
# later runs none.
#
# It also builds the cosign CLIs the provenance tests sign with, as
# bin/cosign-v2 and bin/cosign-v3, each with its own go.mod (go install
# MODULE@VERSION): rebuilt only when the pinned version changes, ~8 minutes
# each the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
export CGO_ENABLED=0

build() { # build MODULE_DIR PACKAGE OUTPUT [EXTRA_LDFLAGS]
  local dir=$1 pkg=$2 out=bin/$3 ldflags="-s -w ${4:-}"
  local stamp="$out.stamp"
  local want
  want=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1)
  if [[ -x $out && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  echo "building $out from $dir ($pkg)..." >&2
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "../../$out" "$pkg")
  echo "$want" > "$stamp"
}

# install_at PACKAGE@VERSION OUTPUT: go install with the package's own
# go.mod, into a temporary GOBIN, then renamed: bin/ may hold another
# binary of the same base name.
install_at() {
  local pkgver=$1 out=bin/$2
  local stamp="$out.stamp"
  if [[ -x $out && -f $stamp && $(cat "$stamp") == "$pkgver" ]]; then
    return
  fi
  echo "building $out ($pkgver)..." >&2
  local tmp
  tmp=$(mktemp -d)
  GOBIN=$tmp go install -trimpath -ldflags '-s -w' "$pkgver"
  mv "$tmp/$(basename "${pkgver%@*}")" "$out"
  rm -rf "$tmp"
  echo "$pkgver" > "$stamp"
}

build tools/etcd . etcd
build tools/kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build tools/kube k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build tools/kube k8s.io/kubernetes/cmd/kubectl kubectl
# helm reports the version it was stamped with (chart kubeVersion checks,
# `helm version`); unstamped it would say v4.3.
build tools/helm helm.sh/helm/v4/cmd/helm helm '-X helm.sh/helm/v4/internal/version.version=v4.3.2'
install_at github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5 cosign-v2
install_at github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3 cosign-v3
