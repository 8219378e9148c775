package com.mbqonnx.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** Bad user settings and missing files fail early with messages that say what is wrong. */
public class BadSettingsTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private static LatencyMap map() {
        return new LatencyMap(Arrays.asList(new MapPoint(0.0, 8.0, 20.0), new MapPoint(1.0, 4.0, 10.0)));
    }

    private static void assertMessage(Throwable e, String... parts) {
        for (String part : parts) {
            assertTrue("message should mention '" + part + "': " + e.getMessage(), e.getMessage().contains(part));
        }
    }

    @Test
    public void budgetMustBePositive() {
        for (double bad : new double[] {0.0, -5.0, Double.NaN, Double.POSITIVE_INFINITY}) {
            try {
                GenerationSettings.budget(bad, 16, Sampler.greedy());
                fail("budget " + bad + " should be rejected");
            } catch (IllegalArgumentException e) {
                assertMessage(e, "latency budget", "> 0", String.valueOf(bad));
            }
            try {
                new BudgetController(map(), bad, null);
                fail("controller budget " + bad + " should be rejected");
            } catch (IllegalArgumentException e) {
                assertMessage(e, "latency budget", "> 0");
            }
        }
        try {
            BudgetController.forTokensPerSecond(map(), 0.0, null);
            fail("0 tok/s should be rejected");
        } catch (IllegalArgumentException e) {
            assertMessage(e, "tok/s", "> 0");
        }
    }

    @Test
    public void otherSettingsAreValidated() {
        try {
            GenerationSettings.budget(50.0, 0, Sampler.greedy());
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "max new tokens", ">= 1");
        }
        try {
            GenerationSettings.fixedTau(1.5, 8, Sampler.greedy());
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "τ", "[0, 1]", "1.5");
        }
        try {
            GenerationSettings.fixedSlices(2, 8, Sampler.greedy()).newController(null, null, 1);
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "slice count", "1..1");
        }
        try {
            GenerationSettings.budget(50.0, 8, Sampler.greedy()).newController(null, null, 3);
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "map", "probe");
        }
        try {
            Sampler.topK(0, 1.0, 1L);
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "top-k", ">= 1");
        }
        try {
            Sampler.topK(5, 0.0, 1L);
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "temperature", "> 0");
        }
    }

    @Test
    public void emptyPromptIsRejected() throws Exception {
        Generator g = new Generator(new OrtFreeModel(), ModelConfig.ofSliceBits(4, 2, 2), new long[0], System::nanoTime);
        try {
            g.generate(new long[0], GenerationSettings.fixedTau(0.5, 4, Sampler.greedy()), FixedController.ofTau(0.5),
                    null, null);
            fail();
        } catch (IllegalArgumentException e) {
            assertMessage(e, "prompt is empty");
        }
    }

    @Test
    public void missingModelFolderIsNamed() {
        File dir = new File(tmp.getRoot(), "no-such-model");
        try {
            ModelFiles.locate(dir);
            fail();
        } catch (ModelException e) {
            assertMessage(e, "model folder not found", dir.getAbsolutePath(), "adb");
        }
    }

    @Test
    public void incompleteModelFolderListsEveryMissingFile() throws IOException {
        File dir = tmp.newFolder("model");
        Files.write(new File(dir, ModelFiles.CONFIG).toPath(), "{\"slice_bits\": [4, 2, 2]}".getBytes(StandardCharsets.UTF_8));
        try {
            ModelFiles.locate(dir);
            fail();
        } catch (ModelException e) {
            assertMessage(e, "is missing", "model.ort", ModelFiles.TOKENIZER, ModelFiles.DETOKENIZER);
            assertTrue(e.getMessage(), !e.getMessage().contains("is missing: " + ModelFiles.CONFIG));
        }
        for (String name : new String[] {"model.ort", ModelFiles.TOKENIZER, ModelFiles.DETOKENIZER}) {
            Files.write(new File(dir, name).toPath(), new byte[] {0});
        }
        try {
            assertEquals(new File(dir, "model.ort"), ModelFiles.locate(dir).model);
        } catch (ModelException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    public void missingModelFileFailsBeforeOrtLoads() {
        File missing = new File(tmp.getRoot(), "model.ort");
        try {
            // The file check comes first, so no native ONNX Runtime is needed to see this error.
            new OrtDecoderModel(null, missing, null, ModelConfig.ofSliceBits(4, 2, 2), 1).close();
            fail();
        } catch (ModelException e) {
            assertMessage(e, "model file not found", missing.getAbsolutePath());
        }
    }

    @Test
    public void badConfigFilesAreReported() throws IOException {
        File dir = tmp.newFolder("cfg");
        File cfg = new File(dir, ModelFiles.CONFIG);
        try {
            ModelConfig.load(cfg);
            fail();
        } catch (ModelException e) {
            assertMessage(e, "model config not found", cfg.getAbsolutePath());
        }
        Files.write(cfg.toPath(), "{\"slice_bits\": [4, 4, 2]}".getBytes(StandardCharsets.UTF_8));
        try {
            ModelConfig.load(cfg);
            fail();
        } catch (ModelException e) {
            assertMessage(e, "bad model config", "at most 8");
        }
        Files.write(cfg.toPath(), "{\"num_layers\": 2}".getBytes(StandardCharsets.UTF_8));
        try {
            ModelConfig.load(cfg);
            fail();
        } catch (ModelException e) {
            assertMessage(e, "bad model config", "slice_bits");
        }
    }

    /** The smallest model: never called in these tests (the error comes first). */
    private static final class OrtFreeModel implements DecoderModel {
        @Override
        public StepOutput step(long[] tokens, float tau, long forceSlices) {
            throw new AssertionError("the loop must validate before calling the model");
        }

        @Override
        public int pastLength() {
            return 0;
        }

        @Override
        public void reset() {
        }

        @Override
        public void close() {
        }
    }
}
