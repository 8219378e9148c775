package com.mbqonnx.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** Locates the repository's shared test data (tests/golden, tests/android/fixtures). */
final class TestData {
    private TestData() {
    }

    /** {@code -Dmbq.repoRoot}, else the first parent of the working dir holding tests/golden. */
    static File repoRoot() {
        String prop = System.getProperty("mbq.repoRoot");
        if (prop != null) {
            return new File(prop);
        }
        for (File d = new File("").getAbsoluteFile(); d != null; d = d.getParentFile()) {
            if (new File(d, "tests/golden").isDirectory()) {
                return d;
            }
        }
        throw new IllegalStateException("cannot find the repository root; pass -Dmbq.repoRoot=...");
    }

    static File file(String relative) {
        return new File(repoRoot(), relative);
    }

    static JSONObject readJson(File f) throws IOException, JSONException {
        return new JSONObject(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8));
    }

    static long[] longs(JSONArray a) throws JSONException {
        long[] out = new long[a.length()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.getLong(i);
        }
        return out;
    }

    static float[] floats(JSONArray a) throws JSONException {
        float[] out = new float[a.length()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) a.getDouble(i);
        }
        return out;
    }
}
