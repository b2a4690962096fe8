#!/usr/bin/env bash
# Installs, builds and runs the agent in the foreground on a unix socket under the repo, with
# a development config that confines file access to run/sandbox. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
mkdir -p run/sandbox
sock="$PWD/run/agent.sock"
# The template's @SANDBOX@ becomes this checkout's absolute sandbox path.
sed "s#@SANDBOX@#$PWD/run/sandbox#g" dev/config.json > run/config.json
cat <<MSG

kvmmanager-agent is starting on unix:$sock (config: run/config.json from dev/config.json, sandbox: run/sandbox)
Talk to it from another terminal:
  build/ctl/kvmmanager-ctl --socket $sock ping
  build/ctl/kvmmanager-ctl --socket $sock call get_agent_info
  echo '{"jsonrpc":"2.0","method":"ping","id":1}' | socat - UNIX-CONNECT:$sock
Stop it with Ctrl-C.

MSG
exec build/agent/kvmmanager-agent --foreground --config run/config.json --listen "unix:$sock" \
  --log-level "${LOG_LEVEL:-info}"
