# StateMesh: one image for the controller and the agent.
#   docker build -t statemesh .
# Static binary; the runtime image adds nftables (the agent's firewall runs
# nft) and CA certificates. The controller runs as the non-root user 65532
# (the Helm chart sets it); the agent needs NET_ADMIN on the host network.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/statemesh/statemesh/internal/cli.Version=${VERSION}" -o /out/statemesh ./cmd/statemesh

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --home-dir /var/lib/statemesh statemesh
COPY --from=build /out/statemesh /usr/local/bin/statemesh
ENTRYPOINT ["/usr/local/bin/statemesh"]
CMD ["--help"]
