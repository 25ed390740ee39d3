#!/usr/bin/env bash
# Builds the control-plane binaries the e2e tests and the demo need into
# bin/ (git-ignored), from the pinned modules under tools/. A binary is
# rebuilt only when its module's go.mod or go.sum changed since it was
# built: the first build takes ~8 minutes on 2 cores, later runs none.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
export CGO_ENABLED=0

build() { # build MODULE_DIR PACKAGE OUTPUT
  local dir=$1 pkg=$2 out=bin/$3
  local stamp="$out.stamp"
  local want
  want=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1)
  if [[ -x $out && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  echo "building $out from $dir ($pkg)..." >&2
  (cd "$dir" && go build -trimpath -ldflags '-s -w' -o "../../$out" "$pkg")
  echo "$want" > "$stamp"
}

build tools/etcd . etcd
build tools/kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build tools/kube k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build tools/kube k8s.io/kubernetes/cmd/kubectl kubectl
