# The Tessera image: tessera, tessera-agent, tessera-trainer and tessera-operator in one
# image, run as the unprivileged user 65532 (the operator's worker pods and the chart's
# Deployment both run it with a read-only root filesystem).
#
#   docker build -t tessera:dev .
#
# The trainer loads CUDA, NVRTC, cuBLAS and NCCL at run time (dynamic loading), so this image
# runs the CPU path anywhere; for GPUs, build FROM an NVIDIA CUDA runtime image instead of
# debian:bookworm-slim (docker build --build-arg RUNTIME=nvidia/cuda:13.0.0-runtime-ubuntu24.04).
ARG RUNTIME=debian:bookworm-slim

FROM rust:1-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/tessera target/release/tessera-agent target/release/tessera-trainer \
       target/release/tessera-operator /out/

FROM ${RUNTIME}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["tessera"]
