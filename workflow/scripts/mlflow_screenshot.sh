#!/usr/bin/env bash
# A screenshot of what `mlflow ui` shows for this project's runs, taken in headless Chromium
# (Debian's chromium package): results/mlflow/runs.png. Usage, from the repository root after
# a pipeline run:  make mlflow-screenshot   (or: bash workflow/scripts/mlflow_screenshot.sh [OUT.png])
# MLflow 3.17's UI opens an experiment on its GenAI overview unless the model-training switch is
# chosen; the URL's workflowType=machine_learning chooses it, as the README's link does.
set -euo pipefail
OUT=${1:-results/mlflow/runs.png}
DB=results/mlflow/mlflow.db
command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 2; }
[ -f "$DB" ] || { echo "no $DB: run the pipeline first" >&2; exit 2; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
EXP=$(.venv/bin/python -c "from mlflow.tracking import MlflowClient; import yaml
name = yaml.safe_load(open('config.yaml')).get('mlflow', {}).get('experiment', 'dchag')
print(MlflowClient('sqlite:///$DB').get_experiment_by_name(name).experiment_id)")
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$DB" --host 127.0.0.1 --port "$PORT" >/dev/null 2>&1 &
SERVER=$!
PROFILE=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$PROFILE"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.5; done
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$PROFILE" \
    --window-size=1600,1000 --virtual-time-budget=20000 --screenshot="$OUT" \
    "http://127.0.0.1:$PORT/#/experiments/$EXP?workflowType=machine_learning" >/dev/null 2>&1
echo "$OUT: the runs of experiment $EXP as mlflow ui shows them"
