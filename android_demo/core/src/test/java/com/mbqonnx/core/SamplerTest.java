package com.mbqonnx.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import org.json.JSONArray;
import org.junit.Test;

/** Greedy and top-k sampling on logits recorded from the Python runtime. */
public class SamplerTest {
    private static float[][] recordedLogits() throws Exception {
        JSONArray calls = TestData.readJson(GenerationTraceTest.fixtureFile()).getJSONArray("traces")
                .getJSONObject(0).getJSONArray("calls");
        float[][] out = new float[calls.length()][];
        for (int i = 0; i < out.length; i++) {
            out[i] = TestData.floats(calls.getJSONObject(i).getJSONArray("logits"));
        }
        return out;
    }

    private static int[] sortedDescending(float[] logits) {
        Integer[] idx = new Integer[logits.length];
        for (int i = 0; i < idx.length; i++) {
            idx[i] = i;
        }
        Arrays.sort(idx, (a, b) -> logits[a] != logits[b] ? Float.compare(logits[b], logits[a]) : Integer.compare(a, b));
        int[] out = new int[idx.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = idx[i];
        }
        return out;
    }

    @Test
    public void topIndicesAreTheLargestInOrder() throws Exception {
        for (float[] logits : recordedLogits()) {
            int[] sorted = sortedDescending(logits);
            assertArrayEquals(Arrays.copyOf(sorted, 10), Sampler.topIndices(logits, 10));
            assertEquals(sorted[0], Sampler.argmax(logits));
            assertEquals(sorted[0], Sampler.greedy().sample(logits));
            assertEquals(sorted[0], Sampler.topK(1, 0.7, 3L).sample(logits));
        }
    }

    @Test
    public void topKSamplesOnlyAmongTheTopKAndIsSeeded() throws Exception {
        float[][] all = recordedLogits();
        Sampler a = Sampler.topK(5, 1.0, 42L);
        Sampler b = Sampler.topK(5, 1.0, 42L);
        for (int rep = 0; rep < 20; rep++) {
            for (float[] logits : all) {
                int[] top = Arrays.copyOf(sortedDescending(logits), 5);
                int t = a.sample(logits);
                assertEquals("same seed, same draws", t, b.sample(logits));
                assertTrue("token " + t + " not in top-5 " + Arrays.toString(top), Arrays.stream(top).anyMatch(x -> x == t));
            }
        }
    }

    @Test
    public void topKReallySamples() throws Exception {
        float[] logits = recordedLogits()[0];
        int[] sorted = sortedDescending(logits);
        double gap = logits[sorted[0]] - logits[sorted[1]];
        // At temperature max(1, gap) the runner-up has probability >= e^-1 / 5 among the top 5.
        Sampler s = Sampler.topK(5, Math.max(1.0, gap), 1L);
        Set<Integer> seen = new HashSet<>();
        for (int i = 0; i < 400; i++) {
            seen.add(s.sample(logits));
        }
        assertTrue("top-5 sampling never left the argmax: " + seen, seen.size() > 1);
        assertTrue(seen.contains(sorted[0]));
    }

    @Test
    public void lowTemperatureApproachesGreedy() throws Exception {
        Sampler cold = Sampler.topK(50, 1e-4, 7L);
        for (float[] logits : recordedLogits()) {
            int[] sorted = sortedDescending(logits);
            if (logits[sorted[0]] - logits[sorted[1]] > 1e-2) {
                assertEquals(sorted[0], cold.sample(logits));
            }
        }
    }

    @Test(expected = IllegalStateException.class)
    public void nanLogitsAreAnError() {
        Sampler.greedy().sample(new float[] {0.1f, Float.NaN, 0.3f});
    }
}
