#!/usr/bin/env bash
# Checks an SAE dashboard page (mechlab sae dashboard --html) in headless
# Chromium (Debian's `chromium`, installed by scripts/setup.sh):
#   - the page loads with no console message at all (the page logs nothing
#     on purpose, so any message is an error: a script exception, a failed
#     load), with every host name unresolvable, so a page that fetched
#     anything would fail;
#   - it names no outside resource: no tag with src/href/srcset/action, no
#     CSS url() or @import (token text is escaped, so a literal "<" in the
#     page source is always a tag);
#   - its script ran: the "N of N panels" line it fills in is in the DOM;
#   - every expected latent has its panel (id="latent-<index>") in the DOM;
#   - a screenshot is written (a PNG of nonzero size).
#
#   scripts/check_dashboard.sh PAGE.html SCREENSHOT.png LATENT...
#
# Exit 0 when all hold; otherwise 1 with one line per failure.
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 PAGE.html SCREENSHOT.png LATENT..." >&2
  exit 2
fi
page=$1 shot=$2
shift 2
[ -f "$page" ] || { echo "check_dashboard: $page: no such file" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "check_dashboard: chromium is not installed; scripts/setup.sh installs it" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url="file://$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"
flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-extensions
  --disable-background-networking --disable-component-update --disable-sync
  --host-resolver-rules="MAP * ~NOTFOUND" --user-data-dir="$work/profile"
  --enable-logging=stderr --v=0)

fail=0
if grep -nEi '<[^>]*[[:space:]](src|href|srcset|action)[[:space:]]*=|url\(|@import' "$page" | head -3 | grep -q .; then
  echo "check_dashboard: $page refers to outside resources:" >&2
  grep -nEi '<[^>]*[[:space:]](src|href|srcset|action)[[:space:]]*=|url\(|@import' "$page" | head -3 | cut -c1-200 | sed 's/^/  /' >&2
  fail=1
fi
# The DOM after the page's script has run, and the console.
if ! timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" >"$work/dom.html" 2>"$work/console.txt"; then
  echo "check_dashboard: chromium failed to load $page" >&2
  sed 's/^/  /' "$work/console.txt" >&2
  exit 1
fi
if grep -q 'CONSOLE' "$work/console.txt"; then
  echo "check_dashboard: console messages while loading $page:" >&2
  grep 'CONSOLE' "$work/console.txt" | sed 's/^/  /' >&2
  fail=1
fi
n=$#
if ! grep -q "<span id=\"shown\">$n of $n panels</span>" "$work/dom.html"; then
  echo "check_dashboard: the page's script did not report \"$n of $n panels\"" >&2
  fail=1
fi
for l in "$@"; do
  if ! grep -q "<section class=\"latent\" id=\"latent-$l\"" "$work/dom.html"; then
    echo "check_dashboard: no panel for latent $l" >&2
    fail=1
  fi
done

rm -f "$shot"
timeout 120 "$browser" "${flags[@]}" --hide-scrollbars --window-size=1200,1600 \
  --screenshot="$(cd "$(dirname "$shot")" && pwd)/$(basename "$shot")" "$url" >/dev/null 2>"$work/shot.txt" || true
if [ ! -s "$shot" ]; then
  echo "check_dashboard: no screenshot written to $shot" >&2
  sed 's/^/  /' "$work/shot.txt" >&2
  fail=1
fi
[ "$fail" -eq 0 ] && echo "check_dashboard: $page OK ($n panels, screenshot $shot)"
exit "$fail"
