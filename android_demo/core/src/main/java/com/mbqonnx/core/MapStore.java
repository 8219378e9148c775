package com.mbqonnx.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Reads and writes a probed latency map as JSON ({@code {"key": ..., "points": [{"tau",
 * "avg_bits", "latency_ms"}]}}, as the Python probe cache), atomically (temp file, then rename).
 */
public final class MapStore {
    private MapStore() {
    }

    /** The cached points for {@code key}, or null when the file is absent or for another key. */
    public static List<MapPoint> load(File file, String key) throws ModelException {
        if (!file.isFile()) {
            return null;
        }
        try {
            JSONObject json = new JSONObject(new String(Files.readAllBytes(file.toPath()), StandardCharsets.UTF_8));
            if (!key.equals(json.optString("key", ""))) {
                return null;
            }
            return parsePoints(json.getJSONArray("points"));
        } catch (IOException | JSONException e) {
            throw new ModelException("bad latency-map cache " + file.getAbsolutePath() + ": " + e.getMessage(), e);
        }
    }

    /** Map points from a JSON array of {@code {"tau", "avg_bits", "latency_ms"}} objects. */
    public static List<MapPoint> parsePoints(JSONArray array) throws JSONException {
        List<MapPoint> points = new ArrayList<>();
        for (int i = 0; i < array.length(); i++) {
            JSONObject p = array.getJSONObject(i);
            points.add(new MapPoint(p.getDouble("tau"), p.getDouble("avg_bits"), p.getDouble("latency_ms")));
        }
        return points;
    }

    /** Writes {@code points} under {@code key}. */
    public static void save(File file, String key, List<MapPoint> points) throws IOException {
        try {
            JSONArray array = new JSONArray();
            for (MapPoint p : points) {
                array.put(new JSONObject().put("tau", p.tau).put("avg_bits", p.avgBits).put("latency_ms", p.latencyMs));
            }
            String text = new JSONObject().put("key", key).put("points", array).toString(1);
            File parent = file.getAbsoluteFile().getParentFile();
            if (!parent.isDirectory() && !parent.mkdirs()) {
                throw new IOException("cannot create " + parent);
            }
            File tmp = File.createTempFile(file.getName(), ".tmp", parent);
            Files.write(tmp.toPath(), text.getBytes(StandardCharsets.UTF_8));
            Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (JSONException e) {
            throw new IOException("cannot encode latency map: " + e.getMessage(), e);
        }
    }
}
