#!/usr/bin/env bash
# Regenerates proto/dlmeshv1 from proto/dlmesh/v1/*.proto, byte for byte:
#   bash proto/gen.sh && git diff --exit-code proto/
# protoc is Debian's (apt-get install -y protobuf-compiler; the headers name its version); the
# two Go plugins are pinned below and built into a temporary directory from the module proxy, so
# whatever is on PATH does not matter.
set -euo pipefail

PROTOC_WANT="3.21.12"
PROTOC_GEN_GO="google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12"
PROTOC_GEN_GO_GRPC="google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

have="$(protoc --version | awk '{print $2}')"
if [ "$have" != "$PROTOC_WANT" ]; then
	echo "proto/gen.sh: protoc $have, want $PROTOC_WANT (Debian bookworm protobuf-compiler); the generated headers would differ" >&2
	exit 1
fi

bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
# go install pkg@version ignores the main module, so these versions are exactly the pinned ones.
GOBIN="$bin" GOFLAGS= go install "$PROTOC_GEN_GO"
GOBIN="$bin" GOFLAGS= go install "$PROTOC_GEN_GO_GRPC"

rm -f proto/dlmeshv1/*.pb.go
PATH="$bin:$PATH" protoc \
	-I proto \
	--go_out=. --go_opt=module=github.com/dlmesh/dlmesh \
	--go-grpc_out=. --go-grpc_opt=module=github.com/dlmesh/dlmesh \
	proto/dlmesh/v1/*.proto
gofmt -l proto/dlmeshv1 | (! grep .) || { echo "proto/gen.sh: generated code is not gofmt-clean" >&2; exit 1; }
