package com.mbqonnx.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.function.LongSupplier;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.BeforeClass;
import org.junit.Test;

/**
 * The Java generation loop against traces recorded from the Python runtime
 * (tests/android/fixtures/generation_trace.json, made by tools/make_android_fixture.py): the
 * recorded model calls are replayed — each call checks the feeds the Java loop built (tokens, past
 * length, attention-mask length, position ids (none for a lean graph), τ as float32, forced slices)
 * and returns the logits and slice counts ORT returned in Python; the clock replays the latencies Python fed its
 * controller. The Java controller, sampler and stats must then reproduce Python's decisions,
 * tokens, stop reason and summary.
 */
public class GenerationTraceTest {
    private static final double TOL = 1e-6;
    private static JSONObject fixture;
    private static ModelConfig config;

    /** {@code -Dmbq.generationFixture=PATH} overrides the committed fixture (the pytest wrapper uses it). */
    static File fixtureFile() {
        String override = System.getProperty("mbq.generationFixture");
        return override != null ? new File(override) : TestData.file("tests/android/fixtures/generation_trace.json");
    }

    @BeforeClass
    public static void load() throws Exception {
        fixture = TestData.readJson(fixtureFile());
        assertEquals("mbq-generation-trace", fixture.getString("format"));
        assertEquals(1, fixture.getInt("version"));
        config = ModelConfig.parse(fixture.getJSONObject("mbq_config"));
    }

    /** A clock the replayed model advances by the recorded step latencies. */
    static final class ReplayClock implements LongSupplier {
        long nanos = 1_000_000_000L;

        @Override
        public long getAsLong() {
            return nanos;
        }
    }

    /** Replays recorded ORT calls, asserting the Java loop feeds what Python fed. */
    static final class ReplayModel implements DecoderModel {
        private final JSONArray calls;
        private final ReplayClock clock;
        private final String trace;
        int next;
        private int past;

        ReplayModel(JSONArray calls, ReplayClock clock, String trace) {
            this.calls = calls;
            this.clock = clock;
            this.trace = trace;
        }

        @Override
        public StepOutput step(long[] tokens, float tau, long forceSlices) {
            try {
                assertTrue(trace + ": the Java loop made more model calls than Python (" + calls.length() + ")",
                        next < calls.length());
                JSONObject call = calls.getJSONObject(next);
                String where = trace + " call " + next;
                DecoderFeeds feeds = DecoderFeeds.forStep(tokens, past);
                assertArrayEquals(where + " input_ids", TestData.longs(call.getJSONArray("input_ids")), feeds.inputIds);
                assertEquals(where + " past length", call.getInt("past_length"), feeds.pastLength);
                assertEquals(where + " attention_mask length", call.getInt("attention_mask_length"),
                        feeds.attentionMask.length);
                if (call.isNull("position_ids")) { // a lean graph: OrtDecoderModel feeds no position ids
                    assertTrue(where + ": no position_ids recorded, but the model is not a lean graph",
                            config.isLeanGraph());
                    assertEquals(where + " logits_to_keep", 1, call.getInt("logits_to_keep"));
                } else {
                    assertArrayEquals(where + " position_ids", TestData.longs(call.getJSONArray("position_ids")),
                            feeds.positionIds);
                }
                assertEquals(where + " tau (float32)", (float) call.getDouble("tau"), tau, (float) TOL);
                assertEquals(where + " force_slices", call.getLong("force_slices"), forceSlices);
                if (!call.isNull("measured_ms")) {
                    clock.nanos += Math.round(call.getDouble("measured_ms") * 1e6);
                }
                next++;
                past += tokens.length;
                return new StepOutput(TestData.floats(call.getJSONArray("logits")),
                        TestData.longs(call.getJSONArray("slice_counts")));
            } catch (org.json.JSONException e) {
                throw new AssertionError(e);
            }
        }

        @Override
        public int pastLength() {
            return past;
        }

        @Override
        public void reset() {
            past = 0;
        }

        @Override
        public void close() {
        }
    }

    private static Controller controllerFor(JSONObject c) throws Exception {
        if (c.getString("mode").equals("budget")) {
            JSONObject p = c.getJSONObject("params");
            ControllerParams params = new ControllerParams(p.getDouble("headroom"), p.getDouble("band"),
                    p.getDouble("gain"), p.getInt("window"), p.getDouble("spike_factor"), p.getDouble("ratio_min"), p.getDouble("ratio_max"));
            return new BudgetController(new LatencyMap(MapStore.parsePoints(c.getJSONArray("map"))),
                    c.getDouble("target_ms"), params);
        }
        return FixedController.ofTau(c.getDouble("tau"));
    }

    private static void replay(JSONObject trace) throws Exception {
        String name = trace.getString("name");
        JSONObject expected = trace.getJSONObject("expected");
        JSONArray calls = trace.getJSONArray("calls");
        ReplayClock clock = new ReplayClock();
        ReplayModel model = new ReplayModel(calls, clock, name);
        Controller controller = controllerFor(trace.getJSONObject("controller"));
        Generator generator = new Generator(model, config, TestData.longs(trace.getJSONArray("stop_token_ids")), clock);
        GenerationSettings settings = controller instanceof BudgetController
                ? GenerationSettings.budget(((BudgetController) controller).targetMs(), trace.getInt("max_new_tokens"),
                        Sampler.greedy())
                : GenerationSettings.fixedTau(controller.decision().tau, trace.getInt("max_new_tokens"), Sampler.greedy());
        List<String> statusOfStep = new ArrayList<>();
        GenerationResult result = generator.generate(TestData.longs(trace.getJSONArray("prompt_ids")), settings,
                controller, (token, index, used, next, stats) -> {
                    if (index > 0) {
                        statusOfStep.add(used.status);
                    }
                }, null);

        assertEquals(name + ": every recorded model call is replayed", calls.length(), model.next);
        assertArrayEquals(name + " tokens", TestData.longs(expected.getJSONArray("token_ids")), result.tokens);
        assertEquals(name + " stop reason", expected.getString("stop_reason"), result.stopReason);

        JSONArray steps = expected.getJSONArray("steps");
        GenerationStats stats = result.stats;
        assertEquals(name + " decode steps", steps.length(), stats.decodeSteps());
        double[] taus = stats.taus();
        double[] bits = stats.bits();
        double[] lat = stats.latencies();
        for (int i = 0; i < steps.length(); i++) {
            JSONObject s = steps.getJSONObject(i);
            String where = name + " step " + i;
            assertEquals(where + " tau", s.getDouble("tau"), taus[i], TOL);
            assertEquals(where + " avg_bits", s.getDouble("avg_bits"), bits[i], 1e-12);
            assertEquals(where + " latency_ms", s.getDouble("latency_ms"), lat[i], TOL);
            if (i < statusOfStep.size()) { // the step that produced a stop token reports no token
                assertEquals(where + " status", s.getString("status"), statusOfStep.get(i));
            }
        }
        JSONObject summary = expected.getJSONObject("summary");
        assertEquals(name + " tok/s", summary.getDouble("tokens_per_s"), stats.tokensPerSecond(),
                TOL * summary.getDouble("tokens_per_s"));
        assertEquals(name + " p50", summary.getDouble("p50_ms"), stats.p50Ms(), TOL);
        assertEquals(name + " p95", summary.getDouble("p95_ms"), stats.p95Ms(), TOL);
        assertEquals(name + " avg bits", summary.getDouble("avg_bits"), stats.averageBits(), 1e-12);
    }

    @Test
    public void budgetTraceMatchesPython() throws Exception {
        replay(trace("budget"));
    }

    @Test
    public void fixedTauTraceWithStopTokenMatchesPython() throws Exception {
        JSONObject t = trace("fixed_tau");
        assertEquals("stop_token", t.getJSONObject("expected").getString("stop_reason"));
        replay(t);
    }

    @Test
    public void configFromTheExportedModelParses() throws Exception {
        assertTrue(config.numSlices() >= 2);
        assertEquals(config.numLayers(), fixture.getJSONObject("model").getInt("num_layers"));
        int total = 0;
        for (int b : config.sliceBits()) {
            total += b;
        }
        assertEquals(total, config.bitsForCount(config.numSlices()));
        assertEquals(config.sliceBits()[0], config.bitsForCount(1));
    }

    static JSONObject trace(String name) throws Exception {
        JSONArray traces = fixture.getJSONArray("traces");
        for (int i = 0; i < traces.length(); i++) {
            if (traces.getJSONObject(i).getString("name").equals(name)) {
                return traces.getJSONObject(i);
            }
        }
        throw new AssertionError("fixture " + fixtureFile() + " has no trace '" + name + "'");
    }
}
