# glance-quota-enforcer: the long-lived `consume` process (or any other command) in a container.
#   npm run image                                   # builds localhost/glance-quota-enforcer:latest
#   podman run --network=host --env-file enforcer.env -v gqe-data:/data localhost/glance-quota-enforcer
# BASE_IMAGE is the official Node 22 slim image; scripts/image.sh substitutes a locally built
# stand-in with the same layout (deploy/podman/base.Containerfile) where no registry is reachable.
ARG BASE_IMAGE=docker.io/library/node:22-slim

FROM ${BASE_IMAGE} AS build
# better-sqlite3 is compiled here, from source: its prebuilt binaries come from GitHub, which an
# air-gapped build cannot reach, and the headers are Node's own under /usr/local (no download).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
ENV npm_config_nodedir=/usr/local \
    npm_config_build_from_source=true \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false
WORKDIR /build/app
COPY package.json package-lock.json ./
# Production dependencies exactly as locked; --ignore-scripts because the root's `prepare` would
# compile TypeScript before the sources are here, then the one native addon is built on its own.
# The addon's sources and objects go at once (12 MB): only better_sqlite3.node is loaded.
# NODE_EXTRA_CA_CERTS: the build host's CA bundle when scripts/image.sh passes it (a proxy that
# inspects TLS); absent, node notes that it cannot load it and trusts its own roots.
RUN --mount=type=cache,target=/root/.npm --mount=type=secret,id=ca-bundle \
    NODE_EXTRA_CA_CERTS=/run/secrets/ca-bundle npm ci --omit=dev --ignore-scripts \
 && npm rebuild better-sqlite3 \
 && (cd node_modules/better-sqlite3 && rm -rf deps src build/deps build/Release/obj build/Release/obj.target build/Release/.deps build/Release/*.a build/Release/test_extension.node) \
 && node -e "require('better-sqlite3')(':memory:').close()"
# The compiler and the type packages alone, at the lockfile's versions, one directory up (module
# resolution walks up to /build/node_modules): the full dev tree carries the function deployment's
# tooling (serverless, hundreds of packages, minutes of npm ci) and none of it compiles anything.
RUN --mount=type=cache,target=/root/.npm --mount=type=secret,id=ca-bundle \
    export NODE_EXTRA_CA_CERTS=/run/secrets/ca-bundle && cd /build && node -e " \
      const lock = require('./app/package-lock.json').packages; \
      const tools = ['typescript', '@types/node', '@types/amqplib', '@types/better-sqlite3', '@types/pg', '@types/aws-lambda']; \
      console.log(tools.map((t) => t + '@' + lock['node_modules/' + t].version).join(' '));" > tools.txt \
 && npm install --no-save --no-package-lock $(cat tools.txt)
COPY tsconfig.json tsconfig.build.json ./
COPY src/ src/
COPY functions/ functions/
# Once compiled, what only a compiler or an editor reads (declarations, source maps, markdown:
# 16 MB) leaves the runtime's node_modules.
# The Redis ledger's Lua scripts are read beside the compiled adapter (src/store/redis/scripts.ts).
RUN /build/node_modules/.bin/tsc -p tsconfig.build.json \
 && cp src/store/redis/*.lua dist/src/store/redis/ \
 && find node_modules -type f \( -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.map' -o -name '*.md' \) -delete

# The runtime is the base without what only builds need (npm, corepack, yarn, Node's C headers:
# about 90 MB, and tools an attacker in the container could use), flattened so the removal
# really shrinks the image.
FROM ${BASE_IMAGE} AS runtime-base
RUN rm -rf /usr/local/lib/node_modules /usr/local/include/node /opt/yarn-* \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg \
 && mkdir -p /data && chown node:node /data \
 && node --version

FROM scratch
COPY --from=runtime-base / /
LABEL org.opencontainers.image.title="glance-quota-enforcer" \
      org.opencontainers.image.description="Per-project image quotas for any OpenStack Glance, enforced from its notifications (OSSN-0076)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.documentation="docs/operators.md"
# The SQLite ledger lives on the volume; PostgreSQL or Redis ledgers set STORE_URL instead.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NODE_ENV=production \
    STORE_URL=sqlite:///data/glance-quota.db
WORKDIR /app
COPY --from=build /build/app/node_modules/ node_modules/
COPY --from=build /build/app/dist/src/ dist/src/
COPY package.json LICENSE ./
COPY bin/ bin/
VOLUME /data
USER node
# METRICS_PORT's default (/healthz, /readyz, /metrics), bound to METRICS_HOST (0.0.0.0 by default).
EXPOSE 10920
# node itself is PID 1 (no npm, no shell): SIGTERM from `podman stop` or the kubelet reaches the
# enforcer, which drains, acks what it committed and exits 0.
ENTRYPOINT ["node", "bin/glance-quota-enforcer.js"]
CMD ["consume"]
