# svcproxy's container image: a static svcproxy on Debian bookworm-slim with
# the tools it runs (both iptables flavors, nft, kmod) and those an operator
# wants beside it (ipset, conntrack), from hack/image-packages.txt, the list
# hack/image-rootfs.sh installs too when it builds this file system without
# a container engine (make test checks svcproxy finds every tool there).
#
#   docker build -t REGISTRY/svcproxy:TAG . && docker push REGISTRY/svcproxy:TAG
#
# (podman and buildah take the same file.) The manifests name the image
# "svcproxy"; point them at yours with
#   cd manifests && kustomize edit set image svcproxy=REGISTRY/svcproxy:TAG

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -o /out/svcproxy ./cmd/svcproxy

FROM debian:bookworm-slim
COPY hack/image-packages.txt /tmp/image-packages.txt
RUN apt-get update \
 && sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' /tmp/image-packages.txt \
    | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/image-packages.txt
COPY --from=build /out/svcproxy /usr/local/bin/svcproxy
ENTRYPOINT ["/usr/local/bin/svcproxy"]
