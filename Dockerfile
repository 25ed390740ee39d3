# syntax=docker/dockerfile:1
#
# buildguard's image: a static binary on distroless, run as nonroot.
#   docker build --build-arg VERSION=$(git describe --tags --always) -t buildguard .

FROM golang:1.26 AS build
ARG VERSION=dev
WORKDIR /src
# Modules first, so they stay cached while the code changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/buildguard ./cmd/buildguard

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/buildguard /buildguard
USER 65532:65532
ENTRYPOINT ["/buildguard"]
