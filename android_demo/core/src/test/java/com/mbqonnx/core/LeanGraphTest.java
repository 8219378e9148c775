package com.mbqonnx.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/**
 * The lean graph's contract on the Java side (docs/export.md "Lean graph"): {@code mbq_config.json}'s
 * {@code graph}/{@code kv_cache}/{@code lm_head}/{@code router_groups} keys, and the shared KV buffers'
 * growth rule. (Running a lean graph needs a native ONNX Runtime, which this JVM cannot load.)
 */
public class LeanGraphTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    /** The keys of a lean export as {@code python -m mbq_onnx.export} writes them (trimmed). */
    private static JSONObject leanConfig() throws JSONException {
        return new JSONObject("{\"slice_bits\": [4, 2, 2], \"num_layers\": 2, \"num_kv_heads\": 1, \"head_dim\": 16,"
                + " \"model_file\": \"model.onnx\", \"ort_model_file\": null, \"eos_token_id\": 2,"
                + " \"custom_op_library\": \"libmbq_ops.so\", \"kind\": \"mixed-bit\","
                + " \"graph\": \"lean\", \"kv_cache\": \"shared-buffer\", \"lm_head\": \"8bit\","
                + " \"router_groups\": [{\"name\": \"/mbq/layers.0/q_k_v\", \"linears\": [\"model.layers.0.self_attn.q_proj\","
                + " \"model.layers.0.self_attn.k_proj\", \"model.layers.0.self_attn.v_proj\"],"
                + " \"weights\": [331776, 110592, 110592]},"
                + " {\"name\": \"/mbq/layers.0/o\", \"linears\": [\"model.layers.0.self_attn.o_proj\"], \"weights\": [331776]}]}");
    }

    private static JSONObject dynamoConfig() throws JSONException {
        return new JSONObject("{\"slice_bits\": [4, 2, 2], \"num_layers\": 2, \"num_kv_heads\": 2, \"head_dim\": 64}");
    }

    private static void assertMessage(Throwable e, String... parts) {
        for (String part : parts) {
            assertTrue("message should mention '" + part + "': " + e.getMessage(), e.getMessage().contains(part));
        }
    }

    private static void assertRejected(JSONObject json, String... parts) {
        try {
            ModelConfig.parse(json);
            fail("config should be rejected: " + json);
        } catch (JSONException e) {
            assertMessage(e, parts);
        }
    }

    @Test
    public void leanConfigIsParsed() throws JSONException {
        ModelConfig c = ModelConfig.parse(leanConfig());
        assertTrue(c.isLeanGraph());
        assertEquals(ModelConfig.GRAPH_LEAN, c.graph());
        assertEquals("8bit", c.lmHead());
        assertEquals(2, c.routerGroups().size());
        ModelConfig.RouterGroup qkv = c.routerGroups().get(0);
        assertEquals("/mbq/layers.0/q_k_v", qkv.name());
        assertEquals(Arrays.asList("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                "model.layers.0.self_attn.v_proj"), qkv.linears());
        assertArrayEquals(new long[] {331776, 110592, 110592}, qkv.weights());
        assertEquals(2, c.numLayers());
        assertEquals(1, c.numKvHeads());
        assertEquals(16, c.headDim());
        assertArrayEquals(new long[] {2}, c.eosTokenIds());
        assertEquals("model.onnx", c.modelFile());
        // A lean export of unrouted (granularity "none") linears lists no groups.
        JSONObject none = leanConfig().put("router_groups", new JSONArray()).put("lm_head", "float");
        assertTrue(ModelConfig.parse(none).routerGroups().isEmpty());
    }

    @Test
    public void olderConfigsAreDynamo() throws JSONException {
        ModelConfig missing = ModelConfig.parse(dynamoConfig());
        assertFalse(missing.isLeanGraph());
        assertEquals(ModelConfig.GRAPH_DYNAMO, missing.graph());
        assertEquals("", missing.lmHead());
        assertTrue(missing.routerGroups().isEmpty());
        assertFalse(ModelConfig.parse(dynamoConfig().put("graph", JSONObject.NULL)).isLeanGraph());
        assertFalse(ModelConfig.parse(dynamoConfig().put("graph", "dynamo")).isLeanGraph());
        assertFalse(ModelConfig.ofSliceBits(4, 2, 2).isLeanGraph());
    }

    @Test
    public void badLeanKeysAreNamed() throws JSONException {
        assertRejected(dynamoConfig().put("graph", "fast"), "graph", "\"lean\"", "\"dynamo\"", "fast");
        assertRejected(dynamoConfig().put("graph", 2), "graph must be a string", "2");
        JSONObject noKv = leanConfig();
        noKv.remove("kv_cache");
        assertRejected(noKv, "lean graph needs kv_cache", "shared-buffer", "none");
        assertRejected(leanConfig().put("kv_cache", "concat"), "lean graph needs kv_cache", "\"concat\"");
        assertRejected(dynamoConfig().put("kv_cache", "shared-buffer"), "kv_cache", "lean graph", "\"dynamo\"");
        assertRejected(leanConfig().put("lm_head", ""), "lm_head");
        assertRejected(leanConfig().put("lm_head", 8), "lm_head must be a string");
        assertRejected(leanConfig().put("router_groups", "all"), "router_groups must be a list");
        assertRejected(leanConfig().put("router_groups", new JSONArray("[3]")), "router_groups[0]", "object");
        assertRejected(leanConfig().put("router_groups", new JSONArray("[{\"linears\": [\"a\"], \"weights\": [1]}]")),
                "router_groups[0] has no name");
        assertRejected(leanConfig().put("router_groups", new JSONArray("[{\"name\": \"g\", \"linears\": [], \"weights\": []}]")),
                "router_groups[0] (g)", "linears", "non-empty");
        assertRejected(leanConfig().put("router_groups",
                new JSONArray("[{\"name\": \"g\", \"linears\": [\"a\", \"b\"], \"weights\": [1]}]")),
                "router_groups[0] (g)", "one N·K count per linear (2)");
        assertRejected(leanConfig().put("router_groups",
                new JSONArray("[{\"name\": \"g\", \"linears\": [\"a\"], \"weights\": [0]}]")),
                "weights[0] must be a positive integer", "0");
        assertRejected(leanConfig().put("router_groups",
                new JSONArray("[{\"name\": \"g\", \"linears\": [\"a\"], \"weights\": [1.5]}]")),
                "weights[0] must be a positive integer", "1.5");
        assertRejected(leanConfig().put("router_groups",
                new JSONArray("[{\"name\": \"g\", \"linears\": [7], \"weights\": [1]}]")),
                "linears[0] must be a linear's name");
    }

    @Test
    public void badLeanConfigFileIsReported() throws IOException, JSONException {
        File cfg = new File(tmp.getRoot(), ModelFiles.CONFIG);
        Files.write(cfg.toPath(), leanConfig().put("kv_cache", "concat").toString().getBytes(StandardCharsets.UTF_8));
        try {
            ModelConfig.load(cfg);
            fail();
        } catch (ModelException e) {
            assertMessage(e, "bad model config", cfg.getAbsolutePath(), "kv_cache");
        }
        Files.write(cfg.toPath(), leanConfig().toString().getBytes(StandardCharsets.UTF_8));
        try {
            assertTrue(ModelConfig.load(cfg).isLeanGraph());
        } catch (ModelException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    public void capacityDoublesOrFitsTheStep() {
        assertEquals(256, SharedKvCache.grownCapacity(256, 0));
        assertEquals(256, SharedKvCache.grownCapacity(256, 256));
        assertEquals(512, SharedKvCache.grownCapacity(256, 257));
        assertEquals(1000, SharedKvCache.grownCapacity(256, 1000)); // a long prompt: exactly what it needs
        assertEquals(2, SharedKvCache.grownCapacity(1, 2));
        assertEquals(Integer.MAX_VALUE, SharedKvCache.grownCapacity(Integer.MAX_VALUE / 2 + 1, Integer.MAX_VALUE));
        for (int[] bad : new int[][] {{0, 1}, {-4, 1}, {8, -1}}) {
            try {
                SharedKvCache.grownCapacity(bad[0], bad[1]);
                fail("grownCapacity" + Arrays.toString(bad) + " should be rejected");
            } catch (IllegalArgumentException e) {
                assertMessage(e, ">= ");
            }
        }
    }

    /** Value at (buffer, head, position, d): distinct for every element. */
    private static float mark(int b, int h, int p, int d) {
        return b * 1e6f + h * 1e4f + p * 10f + d;
    }

    @Test
    public void growthKeepsTheFilledPositionsOfEveryHead() {
        int buffers = 4;
        int heads = 3;
        int dim = 2;
        SharedKvCache cache = new SharedKvCache(buffers, heads, dim, 4);
        assertArrayEquals(new long[] {1, heads, 4, dim}, cache.shape());
        for (int b = 0; b < buffers; b++) {
            FloatBuffer buf = cache.buffer(b);
            assertTrue("ORT uses a direct buffer's memory in place", buf.isDirect());
            assertEquals(ByteOrder.nativeOrder(), buf.order());
            assertEquals(0, buf.position());
            assertEquals(heads * 4 * dim, buf.remaining());
        }
        // A 3-token prompt, written where GroupQueryAttention would write it: [h, p, d] in capacity 4.
        assertFalse(cache.reserve(3));
        write(cache, 0, 3);
        cache.advance(3);
        FloatBuffer before = cache.buffer(0);
        assertFalse("one more token still fits", cache.reserve(4));
        assertSame(cache.buffer(0), before);
        write(cache, 3, 4);
        cache.advance(1);
        // The next token needs 5 > 4 positions: double, copy 4 positions per head.
        assertTrue(cache.reserve(5));
        assertEquals(8, cache.capacity());
        assertEquals(4, cache.length());
        assertArrayEquals(new long[] {1, heads, 8, dim}, cache.shape());
        for (int b = 0; b < buffers; b++) {
            FloatBuffer buf = cache.buffer(b);
            assertTrue(buf.isDirect());
            assertEquals(ByteOrder.nativeOrder(), buf.order());
            assertEquals(0, buf.position());
            assertEquals(heads * 8 * dim, buf.remaining());
            for (int h = 0; h < heads; h++) {
                for (int p = 0; p < 8; p++) {
                    for (int d = 0; d < dim; d++) {
                        float expected = p < 4 ? mark(b, h, p, d) : 0f;
                        assertEquals("buffer " + b + " head " + h + " position " + p, expected,
                                buf.get((h * 8 + p) * dim + d), 0f);
                    }
                }
            }
        }
        // A prompt longer than twice the capacity gets exactly its length.
        assertTrue(cache.reserve(40));
        assertEquals(40, cache.capacity());
        assertEquals(mark(3, 2, 3, 1), cache.buffer(3).get((2 * 40 + 3) * dim + 1), 0f);
        cache.clear();
        assertEquals(0, cache.length());
        assertEquals("clear keeps the buffers", 40, cache.capacity());
    }

    private static void write(SharedKvCache cache, int from, int to) {
        int cap = cache.capacity();
        int heads = (int) cache.shape()[1];
        int dim = (int) cache.shape()[3];
        for (int b = 0; b < cache.numBuffers(); b++) {
            for (int h = 0; h < heads; h++) {
                for (int p = from; p < to; p++) {
                    for (int d = 0; d < dim; d++) {
                        cache.buffer(b).put((h * cap + p) * dim + d, mark(b, h, p, d));
                    }
                }
            }
        }
    }

    @Test
    public void badCacheUseIsRejected() {
        SharedKvCache cache = new SharedKvCache(2, 1, 16, 2);
        try {
            cache.advance(3);
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "advance", "capacity 2", "reserve first");
        }
        for (int[] bad : new int[][] {{0, 1, 16, 8}, {2, 0, 16, 8}, {2, 1, 0, 8}, {2, 1, 16, 0}}) {
            try {
                new SharedKvCache(bad[0], bad[1], bad[2], bad[3]);
                fail("SharedKvCache" + Arrays.toString(bad) + " should be rejected");
            } catch (IllegalArgumentException e) {
                assertMessage(e, ">= 1");
            }
        }
        try {
            new SharedKvCache(2, 32, 128, 1 << 17); // 32 × 131072 × 128 floats = 2 GiB
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "exceeds 2 GiB");
        }
    }

    @Test
    public void badCapacityFailsBeforeOrtLoads() {
        File missing = new File(tmp.getRoot(), "model.ort");
        try {
            new OrtDecoderModel(null, missing, null, ModelConfig.ofSliceBits(4, 2, 2), 1, 0).close();
            fail();
        } catch (ModelException e) {
            assertMessage(e, "KV-cache capacity", ">= 1", "0");
        }
    }
}
