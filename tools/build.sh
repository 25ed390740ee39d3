#!/usr/bin/env bash
# Builds the control-plane binaries the e2e tests and the demo need into
# bin/ (git-ignored), from the pinned modules under tools/. A binary is
# rebuilt only when its module's go.mod or go.sum changed since it was
# built: the first build takes ~11 minutes on 2 cores (helm ~3 of them),
# later runs none.
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

build tools/etcd . etcd
build tools/kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build tools/kube k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build tools/kube k8s.io/kubernetes/cmd/kubectl kubectl
# helm reports the version it was stamped with (chart kubeVersion checks,
# `helm version`); unstamped it would say v4.3.
build tools/helm helm.sh/helm/v4/cmd/helm helm '-X helm.sh/helm/v4/internal/version.version=v4.3.2'
