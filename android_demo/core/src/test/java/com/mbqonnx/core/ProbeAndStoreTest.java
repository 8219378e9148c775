package com.mbqonnx.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** The on-device probe procedure (on a simulated plant) and the map cache. */
public class ProbeAndStoreTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    @Test
    public void gridMatchesThePythonGoldenCases() throws Exception {
        JSONArray cases = TestData.readJson(TestData.file("tests/android/fixtures/probe_grid.json"))
                .getJSONArray("cases");
        assertTrue(cases.length() >= 5);
        for (int c = 0; c < cases.length(); c++) {
            JSONObject k = cases.getJSONObject(c);
            ModelConfig config = ModelConfig.parse(new JSONObject()
                    .put("slice_bits", new JSONArray(new int[] {4, 2, 2}))
                    .put("tau_table", k.getJSONArray("tau_table")));
            JSONArray want = k.getJSONArray("grid");
            double[] expected = new double[want.length()];
            for (int i = 0; i < expected.length; i++) {
                expected[i] = want.getDouble(i);
            }
            assertArrayEquals(k.getString("name"), expected,
                    LatencyProbe.grid(config.tableTaus(), config.tableBits()), 0.0);
        }
    }

    @Test
    public void gridRejectsMismatchedColumns() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> LatencyProbe.grid(Arrays.asList(0.1, 0.2), Collections.singletonList(7.0)));
        assertTrue(e.getMessage(), e.getMessage().contains("2 τ values but 1 average bits"));
    }

    /**
     * A plant whose step takes {@code 10 - 6τ} ms and uses 3 slices below τ = 0.5, else 1, with
     * one 50 ms outlier per run (the median must ignore it).
     */
    private static final class Plant implements DecoderModel {
        final long[] clock = {0L};
        int past;
        int stepInRun;

        @Override
        public StepOutput step(long[] tokens, float tau, long forceSlices) {
            boolean prefill = past == 0;
            past += tokens.length;
            if (!prefill) {
                double ms = stepInRun++ == 1 ? 50.0 : 10.0 - 6.0 * tau;
                clock[0] += Math.round(ms * 1e6);
            }
            long count = tau < 0.5f ? 3 : 1;
            return new StepOutput(new float[] {0f, 1f, 0.5f}, new long[] {count, count});
        }

        @Override
        public int pastLength() {
            return past;
        }

        @Override
        public void reset() {
            past = 0;
            stepInRun = 0;
        }

        @Override
        public void close() {
        }
    }

    @Test
    public void probeMeasuresMedianLatencyAndMeanBits() throws Exception {
        Plant plant = new Plant();
        ModelConfig config = ModelConfig.ofSliceBits(4, 2, 2);
        List<MapPoint> points = new LatencyProbe(plant, config, () -> plant.clock[0], 4).measure(new long[] {1, 2, 3});
        double[] grid = LatencyProbe.grid(config.tableTaus(), config.tableBits());
        assertEquals(grid.length, points.size());
        for (int i = 0; i < grid.length; i++) {
            MapPoint p = points.get(i);
            assertEquals(grid[i], p.tau, 0.0);
            assertEquals(10.0 - 6.0 * (float) grid[i], p.latencyMs, 1e-6);
            assertEquals(grid[i] < 0.5 ? 8.0 : 4.0, p.avgBits, 0.0);
        }
    }

    @Test
    public void mapCacheRoundTripsAndChecksTheKey() throws Exception {
        File f = new File(tmp.getRoot(), "probe/abc.json");
        List<MapPoint> points = Arrays.asList(new MapPoint(0.0, 8.0, 20.5), new MapPoint(1.0, 4.0, 10.25));
        MapStore.save(f, "abc", points);
        List<MapPoint> back = MapStore.load(f, "abc");
        assertEquals(2, back.size());
        assertEquals(20.5, back.get(0).latencyMs, 0.0);
        assertEquals(4.0, back.get(1).avgBits, 0.0);
        assertNull(MapStore.load(f, "other-device"));
        assertNull(MapStore.load(new File(tmp.getRoot(), "none.json"), "abc"));
    }

    @Test
    public void statsPercentilesInterpolateLikeNumpy() {
        GenerationStats s = new GenerationStats();
        for (double ms : new double[] {4.0, 1.0, 3.0, 2.0}) {
            s.recordStep(ms, 0.5, 10.0, 6.0);
        }
        assertEquals(2.5, s.p50Ms(), 1e-12);       // numpy.percentile([1,2,3,4], 50)
        assertEquals(3.85, s.p95Ms(), 1e-12);      // numpy.percentile([1,2,3,4], 95)
        assertEquals(1000.0 * 4 / 10.0, s.tokensPerSecond(), 1e-9);
        assertEquals(1000.0 * 2 / 5.0, s.recentTokensPerSecond(2), 1e-9);
    }
}
