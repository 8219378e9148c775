#!/usr/bin/env bash
# Compile the Android demo's pure-Java core (and the app sources that use no Android classes)
# with javac against the ONNX Runtime Java API (classes.jar from the onnxruntime Android AAR,
# via tools/fetch_ort_sdk.py), then run its JUnit 4 tests.
#
# Needs (Debian): a JDK >= 17 (default-jdk-headless), junit4 + libhamcrest-java, and
# libandroid-json-java (Android's own org.json, which the app gets from the framework).
#
# Usage: tools/test_java.sh [-Dmbq.generationFixture=PATH ...]   (extra args go to the JVM)
# Exit status: 0 when every test passes; the JUnit summary ("OK (N tests)" / "Tests run: ...,
# Failures: ...") is the last line of output.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}

find_jar() {  # first existing file among the arguments
  for f in "$@"; do [ -f "$f" ] && { echo "$f"; return 0; }; done
  return 1
}
JUNIT=$(find_jar /usr/share/java/junit4.jar) \
  || { echo "error: /usr/share/java/junit4.jar missing (apt-get install junit4)" >&2; exit 2; }
HAMCREST=$(find_jar /usr/share/java/hamcrest-core.jar /usr/share/java/hamcrest.jar) \
  || { echo "error: hamcrest jar missing (apt-get install libhamcrest-java)" >&2; exit 2; }
JSON=$(find_jar /usr/share/java/com.android.json.jar /usr/share/java/json-android.jar) \
  || { echo "error: Android's org.json jar missing (apt-get install libandroid-json-java)" >&2; exit 2; }
command -v javac >/dev/null || { echo "error: javac not found (apt-get install default-jdk-headless)" >&2; exit 2; }

SDK=$($PY tools/fetch_ort_sdk.py) || { echo "error: tools/fetch_ort_sdk.py failed" >&2; exit 2; }
ORT_JAR="$SDK/android/classes.jar"
[ -f "$ORT_JAR" ] || { echo "error: $ORT_JAR missing" >&2; exit 2; }

OUT=$(mktemp -d "${TMPDIR:-/tmp}/mbq-java.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT/app"
JAVAC=(javac --release 17 -encoding UTF-8 -Xlint:all -Xlint:-options -Werror)
CORE=android_demo/core/src
APP=android_demo/app/src/main/java

echo "==> javac core (against $(basename "$ORT_JAR") from the onnxruntime AAR)"
mapfile -t core_src < <(find "$CORE/main/java" -name '*.java' | sort)
"${JAVAC[@]}" -cp "$ORT_JAR:$JSON" -d "$OUT/core" "${core_src[@]}"

# App sources that import no Android classes compile here too; the rest needs the Android SDK.
app_pure=(); app_android=()
while IFS= read -r f; do
  if grep -Eq '^import (android|androidx|ai\.onnxruntime\.extensions)\.' "$f"; then app_android+=("$f"); else app_pure+=("$f"); fi
done < <(find "$APP" -name '*.java' | sort)
if ((${#app_pure[@]})); then
  echo "==> javac app sources without Android classes: ${app_pure[*]##*/}"
  "${JAVAC[@]}" -cp "$OUT/core:$ORT_JAR:$JSON" -d "$OUT/app" "${app_pure[@]}"
fi
((${#app_android[@]})) && echo "    (need the Android SDK, not compiled here: ${app_android[*]##*/})"

echo "==> javac tests"
mapfile -t test_src < <(find "$CORE/test/java" -name '*.java' | sort)
if ((${#app_pure[@]})) && [ -d android_demo/app/src/test/java ]; then
  mapfile -t -O "${#test_src[@]}" test_src < <(find android_demo/app/src/test/java -name '*.java' | sort)
fi
CP="$OUT/core:$OUT/app:$ORT_JAR:$JSON:$JUNIT:$HAMCREST"
"${JAVAC[@]}" -cp "$CP" -d "$OUT/test" "${test_src[@]}"

mapfile -t classes < <(cd "$OUT/test" && find . -name '*Test.class' | sed 's|^\./||; s|\.class$||; s|/|.|g' | sort)
echo "==> JUnit: ${classes[*]##*.}"
rc=0
java -cp "$OUT/test:$CP" -Dmbq.repoRoot="$REPO" "$@" org.junit.runner.JUnitCore "${classes[@]}" || rc=$?
exit "$rc"
