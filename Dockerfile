# syntax=docker/dockerfile:1
# Duet's container image: a static duet on distroless (no shell, no package
# manager), running as an unprivileged user.
#
#   docker build -t duet:dev --build-arg VERSION=$(git describe --always) .
#   docker run --rm -p 8080:8080 -p 7547:7547 -e DUET_DATABASE_URL=... -e DUET_CWMP_AUTH=shared ... duet:dev
#
# deploy/compose/compose.yaml runs it with PostgreSQL, NATS and Mosquitto.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so editing code does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# CGO_ENABLED=0: a static binary that needs no libc in the final image.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" -o /out/duet ./cmd/duet \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/duet-sim ./cmd/duet-sim \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/duet /out/duet-sim /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /var/lib/duet
COPY LICENSE THIRD_PARTY.md /usr/share/doc/duet/
# distroless's "nonroot" user.
USER 65532:65532
ENV DUET_DATA_DIR=/var/lib/duet \
    DUET_LOG_FORMAT=json
VOLUME /var/lib/duet
# API, health and metrics; CWMP ACS; USP WebSocket; embedded MQTT and STOMP
# brokers; embedded NATS (only when DUET_NATS_URL is empty).
EXPOSE 8080 7547 8081 1883 61613 4222
# No shell in the image: duet itself asks /readyz (on DUET_HTTP_ADDR).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/duet", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/duet"]
CMD ["serve"]
