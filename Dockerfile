# buildguard's image: a static binary on distroless, run as nonroot.
#   make image     (docker build with BuildKit: RUN --mount needs it)
#   DOCKER_BUILDKIT=1 docker build --build-arg VERSION=$(git describe --tags --always) -t buildguard .
#
# No "# syntax=" line: BuildKit's built-in frontend handles RUN --mount,
# and a syntax line makes it fetch a frontend image from Docker Hub first.
# The base images are build arguments, so that a builder without Docker
# Hub (an air-gapped CI, a mirror) can name its own:
#   --build-arg GO_IMAGE=mirror.example/golang:1.26
#   --build-arg BASE_IMAGE=mirror.example/distroless/static-debian12:nonroot
#   --build-arg GOPROXY=https://athens.example
# At run time buildguard needs from BASE_IMAGE only CA certificates (for
# registries over HTTPS); it runs as uid 65532.

ARG GO_IMAGE=golang:1.26
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
# GOPROXY: a module proxy of your own (Athens, Artifactory, a mirror);
# unset, go uses its default, proxy.golang.org.
ARG GOPROXY
WORKDIR /src
# Modules first, so they stay cached while the code changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/buildguard ./cmd/buildguard

FROM ${BASE_IMAGE}
COPY --from=build /out/buildguard /buildguard
USER 65532:65532
ENTRYPOINT ["/buildguard"]
