#!/usr/bin/env bash
# Render the deployment card of a real run into docs/card.png (the README's screenshot).
#
#   docs/card_screenshot.sh            # from the repository root, with the project's .venv
#
# Runs flows/fraud_flow.py twice in a scratch folder (the second deploy has a champion to compare
# with), saves the select step's card with `card get`, and renders it with headless Chromium from
# Debian's packages (installed if missing; we run as root). The card carries its own JS: no network.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/docs/card.png}"
work="$(mktemp -d /tmp/card.XXXX)"  # short: the card shows the repository path
trap 'rm -rf "$work"' EXIT

if ! command -v chromium >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
# shellcheck disable=SC1091
. "$root/.venv/bin/activate"
export METAFLOW_USER="${METAFLOW_USER:-ci}" TRITONFLOW_REPOSITORY="$work/model_repository"
cd "$work"
for _ in 1 2; do
  python "$root/flows/fraud_flow.py" --no-pylint run --rows 6000 >"$work/run.log" 2>&1 \
    || { tail -30 "$work/run.log"; exit 1; }
done
python "$root/flows/fraud_flow.py" --no-pylint card get select --id deployment "$work/card.html" >/dev/null
# NOTE: the card draws itself with JS after load: give it time before the screenshot
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=5000 \
  --window-size=1400,2000 --screenshot="$out" "file://$work/card.html" 2>/dev/null
echo "wrote $out"
