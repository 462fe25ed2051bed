#!/usr/bin/env bash
# Runs a long, quiet step and says every 30 s that it is still going, how long it has taken and how
# long it usually takes (with_heartbeat of hack/cluster/lib.sh). Exits with the step's status.
#
#   hack/heartbeat.sh "installing the Python packages" "3 min the first time" pip install ...
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
with_heartbeat "$@"
