#!/usr/bin/env bash
# Builds the C++ API reference from the /// comments with Doxygen (Debian's
# package; scripts/setup.sh installs it) into build/docs/html, and fails if
# Doxygen warns: a warning is a broken reference, a stale parameter name or a
# malformed command that a reader would trip over.
#   bash scripts/docs.sh [OUT_DIR]      # default: build/docs
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/docs}
command -v doxygen >/dev/null || { echo "doxygen is missing: run bash scripts/setup.sh" >&2; exit 1; }
mkdir -p "$out"
warnings="$out/warnings.txt"
# The configuration is here, not in a Doxyfile, so that it is read with the script.
doxygen - > "$out/doxygen.log" <<CONF
PROJECT_NAME           = mechlab
PROJECT_BRIEF          = "Mechanistic interpretability in C++ on LibTorch"
OUTPUT_DIRECTORY       = $out
INPUT                  = README.md docs/ARCHITECTURE.md apps/include core hooks patching kernels
USE_MDFILE_AS_MAINPAGE = README.md
FILE_PATTERNS          = *.h *.md
RECURSIVE              = YES
EXCLUDE_PATTERNS       = */core/log/*
EXTRACT_ALL            = YES
EXTRACT_STATIC         = NO
JAVADOC_AUTOBRIEF      = YES
QUIET                  = YES
WARNINGS               = YES
WARN_IF_UNDOCUMENTED   = NO
WARN_IF_DOC_ERROR      = YES
WARN_NO_PARAMDOC       = NO
WARN_LOGFILE           = $warnings
GENERATE_HTML          = YES
GENERATE_LATEX         = NO
HAVE_DOT               = NO
MARKDOWN_SUPPORT       = YES
AUTOLINK_SUPPORT       = NO
STRIP_FROM_PATH        = .
FULL_PATH_NAMES        = YES
ENABLE_PREPROCESSING   = YES
MACRO_EXPANSION        = YES
PREDEFINED             = MECHLAB_HAVE_CUDA=1
CONF
if [ -s "$warnings" ]; then
  echo "doxygen warned ($(wc -l < "$warnings") lines, $warnings):" >&2
  head -n 40 "$warnings" >&2
  exit 1
fi
echo "API reference: $out/html/index.html (no warnings)"
