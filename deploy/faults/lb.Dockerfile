# The stand-in for Traefik in the replicas-under-faults test (see haproxy.cfg): Debian's haproxy on the same base
# image deploy/docker-lib.sh gives the service's images (a debootstrapped Debian bookworm where no registry answers).
# Built by deploy/docker-faults.sh with the host's network, for that test only; never deployed.
ARG BASE=debian:bookworm-slim
# hadolint ignore=DL3006
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
RUN haproxy -c -f /etc/haproxy/haproxy.cfg
EXPOSE 8000 8082
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
