package com.mbqonnx.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.BeforeClass;
import org.junit.Test;

/** The Java controller reproduces tests/golden/controller_vectors.json (from the Python controller). */
public class ControllerVectorsTest {
    private static JSONObject vectors;

    @BeforeClass
    public static void load() throws Exception {
        vectors = TestData.readJson(TestData.file("tests/golden/controller_vectors.json"));
        assertEquals("mbq-controller-vectors", vectors.getString("format"));
        assertEquals(1, vectors.getInt("version"));
    }

    private static ControllerParams params(JSONObject p) throws Exception {
        return new ControllerParams(p.getDouble("headroom"), p.getDouble("band"), p.getDouble("gain"), p.getInt("window"),
                p.getDouble("spike_factor"), p.getDouble("ratio_min"), p.getDouble("ratio_max"));
    }

    private static Controller build(JSONObject c) throws Exception {
        String mode = c.getString("mode");
        switch (mode) {
            case "budget": {
                List<MapPoint> points = MapStore.parsePoints(c.getJSONArray("map"));
                return new BudgetController(new LatencyMap(points), c.getDouble("target_ms"), params(c.getJSONObject("params")));
            }
            case "tau":
                return FixedController.ofTau(c.getDouble("tau"));
            case "slices":
                return FixedController.ofSlices(c.getInt("slices"), c.getInt("num_slices"));
            default:
                throw new AssertionError("unknown mode " + mode);
        }
    }

    private static void check(String where, JSONObject expect, Decision d, double tol) throws Exception {
        assertEquals(where + " tau", expect.getDouble("tau"), d.tau, tol);
        assertEquals(where + " force_slices", expect.getInt("force_slices"), d.forceSlices);
        assertEquals(where + " status", expect.getString("status"), d.status);
        assertEquals(where + " ratio", expect.getDouble("ratio"), d.ratio, tol);
        if (expect.isNull("predicted_ms")) {
            assertTrue(where + " predicted_ms should be NaN, got " + d.predictedMs, Double.isNaN(d.predictedMs));
        } else {
            assertEquals(where + " predicted_ms", expect.getDouble("predicted_ms"), d.predictedMs, tol);
        }
    }

    @Test
    public void everyCaseMatchesStepByStep() throws Exception {
        double tol = vectors.getDouble("tolerance");
        JSONArray cases = vectors.getJSONArray("cases");
        assertTrue("no controller cases in the vectors file", cases.length() > 0);
        int checkedSteps = 0;
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            String name = c.getString("name");
            Controller controller = build(c);
            check(name + " initial", c.getJSONObject("initial"), controller.decision(), tol);
            JSONArray steps = c.getJSONArray("steps");
            for (int s = 0; s < steps.length(); s++) {
                JSONObject step = steps.getJSONObject(s);
                Decision d = controller.update(step.getDouble("measured_ms"));
                check(name + " step " + s, step.getJSONObject("expect"), d, tol);
                checkedSteps++;
            }
        }
        assertTrue(checkedSteps > 0);
    }

    @Test
    public void invalidCasesAreRejected() throws Exception {
        JSONArray invalid = vectors.getJSONArray("invalid");
        assertTrue("no invalid cases in the vectors file", invalid.length() > 0);
        for (int i = 0; i < invalid.length(); i++) {
            JSONObject c = invalid.getJSONObject(i);
            try {
                new BudgetController(new LatencyMap(MapStore.parsePoints(c.getJSONArray("map"))),
                        c.getDouble("target_ms"), params(c.getJSONObject("params")));
                fail(c.getString("name") + " should be rejected");
            } catch (IllegalArgumentException expected) {
                assertTrue(expected.getMessage(), expected.getMessage().length() > 10);
            }
        }
    }
}
