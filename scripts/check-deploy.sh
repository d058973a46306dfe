#!/usr/bin/env bash
# Checks the monitoring files in deploy/ with the real tools where this machine has them:
#   promtool (Debian package `prometheus`): the Prometheus config, the alert rules and their unit
#   tests (deploy/prometheus/alerts.test.yml), and every PromQL query of the Grafana dashboard;
#   `docker compose` or `docker-compose`: docker-compose.yml.
# A tool that is missing is skipped with a note, unless `--install` is given: then promtool is
# installed with apt-get (about 10 s; the package's service is not left running).
# Which metrics the files may use is checked by `cargo test --test api dashboards`, against a
# real /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--install" ] && ! command -v promtool >/dev/null; then
    echo "== installing promtool (apt-get install prometheus)"
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus jq >/dev/null
    # Only promtool is wanted: stop the server if the package's scripts started it.
    if [ -x /etc/init.d/prometheus ]; then
        service prometheus stop >/dev/null 2>&1 || true
    fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if command -v promtool >/dev/null; then
    echo "== promtool ($(promtool --version 2>&1 | head -n1))"
    # The config names the token file that compose mounts (/run/secrets/metrics_token), which
    # promtool wants to exist: check a copy that points at a stand-in.
    cp deploy/prometheus/*.yml "$work/"
    printf 'stand-in-token\n' > "$work/metrics_token"
    sed -i "s#/run/secrets/metrics_token#$work/metrics_token#" "$work/prometheus.yml"
    promtool check config "$work/prometheus.yml"
    promtool check rules deploy/prometheus/alerts.yml
    (cd deploy/prometheus && promtool test rules alerts.test.yml)
    # The dashboard's queries parse as PromQL once Grafana's variables are given values: each
    # becomes a recording rule of a throw-away rules file (JSON is YAML).
    jq '{groups: [{name: "dashboard", rules: ([.panels[] | select(.targets) | .targets[].expr]
            | to_entries
            | map({record: "dashboard:query_\(.key)",
                   expr: (.value | gsub("\\$__rate_interval|\\$__interval"; "1m")
                                 | gsub("\\$[A-Za-z_]+"; ".*"))}))}]}' \
        deploy/grafana/dashboards/arosaje.json > "$work/dashboard-queries.yml"
    echo "dashboard queries:"
    promtool check rules "$work/dashboard-queries.yml"
else
    echo "== promtool not found: Prometheus config, rules and dashboard queries not checked (--install)"
fi

# Compose needs the secrets it refuses to start without: stand-ins, not the real `.env`.
compose_env=(JWT_SECRET=stand-in-jwt-secret-of-at-least-32-bytes EMAIL_PEPPER=stand-in-pepper
    METRICS_TOKEN=stand-in-metrics-token INFLUX_TOKEN=stand-in-influx-token
    INFLUX_ADMIN_PASSWORD=stand-in-influx-password)
if docker compose version >/dev/null 2>&1; then
    echo "== docker compose config"
    env "${compose_env[@]}" docker compose -f docker-compose.yml config --quiet
elif command -v docker-compose >/dev/null; then
    echo "== docker-compose config"
    env "${compose_env[@]}" docker-compose -f docker-compose.yml config --quiet
else
    echo "== docker compose not found: docker-compose.yml not checked"
fi
echo "deploy files: checked"
