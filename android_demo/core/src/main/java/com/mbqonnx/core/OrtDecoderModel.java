package com.mbqonnx.core;

import ai.onnxruntime.NodeInfo;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.TensorInfo;
import java.io.File;
import java.nio.FloatBuffer;
import java.nio.LongBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * {@link DecoderModel} over the {@code ai.onnxruntime} Java API for an exported mbq-onnx model
 * (I/O: docs/architecture.md "Exported model dir", docs/export.md "Lean graph"). Two KV-cache
 * conventions, chosen by the graph (and checked against {@code mbq_config.json}'s {@code "graph"}):
 * <ul>
 *   <li><b>lean</b> (input {@code logits_to_keep}): one preallocated direct buffer per layer and kind
 *   ({@link SharedKvCache}), wrapped once as an {@link OnnxTensor} and passed both as input
 *   {@code past_key_values.{i}.*} and as pinned output {@code present.{i}.*}
 *   ({@link OrtSession#run(Map, Map)}), so GroupQueryAttention appends in place; the cache doubles
 *   (one copy) when a step needs more room. Feeds {@code logits_to_keep} = 1, no position ids.</li>
 *   <li><b>dynamo</b>: the {@code present.*} outputs of one step are fed unchanged as
 *   {@code past_key_values.*} of the next (no copy through Java arrays); the first step feeds empty
 *   {@code [1, kv_heads, 0, head_dim]} pasts.</li>
 * </ul>
 */
public final class OrtDecoderModel implements DecoderModel {
    private final OrtEnvironment env;
    private final OrtSession session;
    private final List<String> pastNames = new ArrayList<>();
    private final List<String> presentNames = new ArrayList<>();
    private final boolean routed;
    private final boolean lean;
    private final int kvHeads;
    private final int headDim;
    private final Map<String, OnnxTensor> past = new HashMap<>();
    private OrtSession.Result lastResult;
    private int pastLength;
    /** Lean graph only: the shared buffers, and one tensor over each (re-created when the cache grows). */
    private final SharedKvCache cache;
    private OnnxTensor[] cacheTensors;

    /**
     * Opens {@code modelFile} with the custom-op library at {@code customOpLibrary} (an absolute
     * path; null for a model without {@code com.mbq} ops) and {@code threads} intra-op threads
     * (0 = ORT's default). A lean graph's KV cache starts at {@link SharedKvCache#DEFAULT_CAPACITY} positions.
     */
    public OrtDecoderModel(OrtEnvironment env, File modelFile, String customOpLibrary, ModelConfig config,
                           int threads) throws ModelException {
        this(env, modelFile, customOpLibrary, config, threads, SharedKvCache.DEFAULT_CAPACITY);
    }

    /**
     * As above; a lean graph's KV cache starts with room for {@code kvCapacity} positions (it grows
     * when a step needs more; ignored for a dynamo graph).
     */
    public OrtDecoderModel(OrtEnvironment env, File modelFile, String customOpLibrary, ModelConfig config,
                           int threads, int kvCapacity) throws ModelException {
        if (kvCapacity < 1) {
            throw new ModelException("KV-cache capacity must be >= 1 position, got " + kvCapacity);
        }
        if (!modelFile.isFile()) {
            throw new ModelException("model file not found: " + modelFile.getAbsolutePath());
        }
        this.env = env;
        try (OrtSession.SessionOptions options = new OrtSession.SessionOptions()) {
            if (customOpLibrary != null) {
                if (!new File(customOpLibrary).isFile()) {
                    throw new ModelException("custom-op library not found: " + customOpLibrary);
                }
                options.registerCustomOpLibrary(customOpLibrary);
            }
            if (threads > 0) {
                options.setIntraOpNumThreads(threads);
            }
            session = env.createSession(modelFile.getAbsolutePath(), options);
        } catch (OrtException e) {
            throw new ModelException("cannot open model " + modelFile.getAbsolutePath() + ": " + e.getMessage(), e);
        }
        boolean isLean = false;
        SharedKvCache kv = null;
        try {
            Map<String, NodeInfo> inputs = session.getInputInfo();
            Map<String, NodeInfo> outputs = session.getOutputInfo();
            for (int i = 0; inputs.containsKey("past_key_values." + i + ".key"); i++) {
                for (String kind : new String[] {"key", "value"}) {
                    pastNames.add("past_key_values." + i + "." + kind);
                    presentNames.add("present." + i + "." + kind);
                }
            }
            isLean = inputs.containsKey("logits_to_keep");
            if (isLean != config.isLeanGraph()) {
                throw new ModelException(isLean
                        ? "model " + modelFile.getName() + " is a lean graph (it has a logits_to_keep input) but "
                                + "mbq_config.json says graph \"" + config.graph() + "\"; use the config exported with it"
                        : "mbq_config.json says graph \"lean\" but model " + modelFile.getName()
                                + " has no logits_to_keep input; use the config exported with it");
            }
            String[] required = isLean ? new String[] {"input_ids", "attention_mask", "logits_to_keep"}
                    : new String[] {"input_ids", "attention_mask", "position_ids"};
            for (String name : required) {
                if (!inputs.containsKey(name)) {
                    throw new ModelException("model " + modelFile.getName() + " has no input '" + name
                            + "'; inputs are " + inputs.keySet());
                }
            }
            for (String name : presentNames) {
                if (!outputs.containsKey(name)) {
                    throw new ModelException("model " + modelFile.getName() + " has no output '" + name
                            + "'; outputs are " + outputs.keySet());
                }
            }
            if (pastNames.isEmpty()) {
                throw new ModelException("model " + modelFile.getName()
                        + " has no past_key_values.* inputs; export it with the KV cache (text-generation-with-past)");
            }
            routed = inputs.containsKey("tau") && inputs.containsKey("force_slices");
            long[] shape = ((TensorInfo) inputs.get(pastNames.get(0)).getInfo()).getShape();
            kvHeads = shape.length == 4 && shape[1] > 0 ? (int) shape[1] : config.numKvHeads();
            headDim = shape.length == 4 && shape[3] > 0 ? (int) shape[3] : config.headDim();
            if (kvHeads <= 0 || headDim <= 0) {
                throw new ModelException("cannot tell the KV-cache shape of " + modelFile.getName()
                        + ": the graph has symbolic dims and mbq_config.json lacks num_kv_heads/head_dim");
            }
            if (isLean) {
                kv = new SharedKvCache(pastNames.size(), kvHeads, headDim, kvCapacity);
            }
        } catch (OrtException e) {
            close();
            throw new ModelException("cannot inspect model " + modelFile.getName() + ": " + e.getMessage(), e);
        } catch (ModelException e) {
            close();
            throw e;
        } catch (IllegalArgumentException e) { // a cache too big for one buffer
            close();
            throw new ModelException("cannot allocate the KV cache of " + modelFile.getName() + ": " + e.getMessage(), e);
        } finally {
            lean = isLean;
            cache = kv;
        }
    }

    /** True when the graph takes {@code tau}/{@code force_slices} (a mixed-bit model). */
    public boolean isRouted() {
        return routed;
    }

    /** True for a lean graph (shared past/present buffers, {@code logits_to_keep}). */
    public boolean isLean() {
        return lean;
    }

    /** Positions a lean graph's KV cache holds now (0 for a dynamo graph). */
    public int kvCapacity() {
        return cache == null ? 0 : cache.capacity();
    }

    @Override
    public int pastLength() {
        return pastLength;
    }

    @Override
    public StepOutput step(long[] tokens, float tau, long forceSlices) throws ModelException {
        if (lean) {
            return stepShared(tokens, tau, forceSlices);
        }
        DecoderFeeds feeds = DecoderFeeds.forStep(tokens, pastLength);
        Map<String, OnnxTensor> inputs = new HashMap<>();
        List<OnnxTensor> owned = new ArrayList<>();
        try {
            owned.add(put(inputs, "input_ids", OnnxTensor.createTensor(env, LongBuffer.wrap(feeds.inputIds), feeds.tokenShape())));
            owned.add(put(inputs, "attention_mask",
                    OnnxTensor.createTensor(env, LongBuffer.wrap(feeds.attentionMask), feeds.maskShape())));
            owned.add(put(inputs, "position_ids",
                    OnnxTensor.createTensor(env, LongBuffer.wrap(feeds.positionIds), feeds.tokenShape())));
            if (routed) {
                owned.add(put(inputs, "tau", OnnxTensor.createTensor(env, FloatBuffer.wrap(new float[] {tau}), new long[0])));
                owned.add(put(inputs, "force_slices",
                        OnnxTensor.createTensor(env, LongBuffer.wrap(new long[] {forceSlices}), new long[0])));
            }
            for (String name : pastNames) {
                OnnxTensor t = past.get(name);
                if (t == null) { // first step: empty cache
                    t = OnnxTensor.createTensor(env, FloatBuffer.allocate(0), feeds.pastShape(kvHeads, headDim));
                    owned.add(t);
                }
                inputs.put(name, t);
            }
            OrtSession.Result result = session.run(inputs);
            StepOutput out = readOutputs(result, tokens.length);
            // The presents become the next pasts; the previous result (old pasts) can go.
            past.clear();
            for (int i = 0; i < pastNames.size(); i++) {
                past.put(pastNames.get(i), tensor(result, presentNames.get(i)));
            }
            if (lastResult != null) {
                lastResult.close();
            }
            lastResult = result;
            pastLength += tokens.length;
            return out;
        } catch (OrtException e) {
            throw new ModelException("model step failed (past length " + pastLength + ", " + tokens.length
                    + " tokens): " + e.getMessage(), e);
        } finally {
            for (OnnxTensor t : owned) {
                t.close();
            }
        }
    }

    /**
     * A lean-graph step: the cache tensors are input and pinned output at once, so ORT writes the new
     * positions into {@link #cache}'s buffers; only {@code logits [1, 1, vocab]} and
     * {@code slice_counts} are allocated by ORT (and freed with the result).
     */
    private StepOutput stepShared(long[] tokens, float tau, long forceSlices) throws ModelException {
        DecoderFeeds feeds = DecoderFeeds.forStep(tokens, pastLength);
        Map<String, OnnxTensor> inputs = new HashMap<>();
        Map<String, OnnxTensor> pinned = new HashMap<>();
        List<OnnxTensor> owned = new ArrayList<>();
        try {
            if (cache.reserve(pastLength + tokens.length) || cacheTensors == null) {
                closeCacheTensors(); // they wrap the old buffers (the grown cache copied what they held)
                OnnxTensor[] fresh = new OnnxTensor[pastNames.size()];
                try {
                    for (int i = 0; i < fresh.length; i++) {
                        fresh[i] = OnnxTensor.createTensor(env, cache.buffer(i), cache.shape());
                    }
                } catch (OrtException e) {
                    for (OnnxTensor t : fresh) {
                        if (t != null) {
                            t.close();
                        }
                    }
                    throw e;
                }
                cacheTensors = fresh;
            }
            owned.add(put(inputs, "input_ids", OnnxTensor.createTensor(env, LongBuffer.wrap(feeds.inputIds), feeds.tokenShape())));
            owned.add(put(inputs, "attention_mask",
                    OnnxTensor.createTensor(env, LongBuffer.wrap(feeds.attentionMask), feeds.maskShape())));
            owned.add(put(inputs, "logits_to_keep", OnnxTensor.createTensor(env, LongBuffer.wrap(new long[] {1}), new long[0])));
            if (routed) {
                owned.add(put(inputs, "tau", OnnxTensor.createTensor(env, FloatBuffer.wrap(new float[] {tau}), new long[0])));
                owned.add(put(inputs, "force_slices",
                        OnnxTensor.createTensor(env, LongBuffer.wrap(new long[] {forceSlices}), new long[0])));
            }
            for (int i = 0; i < pastNames.size(); i++) {
                inputs.put(pastNames.get(i), cacheTensors[i]);
                pinned.put(presentNames.get(i), cacheTensors[i]);
            }
            try (OrtSession.Result result = session.run(inputs, pinned)) {
                StepOutput out = readOutputs(result, tokens.length);
                cache.advance(tokens.length);
                pastLength += tokens.length;
                return out;
            }
        } catch (OrtException e) {
            throw new ModelException("model step failed (past length " + pastLength + ", " + tokens.length
                    + " tokens, KV capacity " + cache.capacity() + "): " + e.getMessage(), e);
        } catch (IllegalArgumentException e) { // the grown cache would not fit one buffer
            throw new ModelException("cannot grow the KV cache to " + (pastLength + tokens.length) + " positions: "
                    + e.getMessage(), e);
        } finally {
            for (OnnxTensor t : owned) {
                t.close();
            }
        }
    }

    private void closeCacheTensors() {
        if (cacheTensors != null) {
            for (OnnxTensor t : cacheTensors) {
                t.close();
            }
            cacheTensors = null;
        }
    }

    /** Last position's logits ({@code [1, rows, vocab]}: rows = seq, or logits_to_keep) and slice counts. */
    private StepOutput readOutputs(OrtSession.Result result, int seq) throws OrtException, ModelException {
        OnnxTensor logits = tensor(result, "logits");
        long[] shape = logits.getInfo().getShape();
        int vocab = (int) shape[shape.length - 1];
        int rows = shape.length >= 2 ? (int) shape[shape.length - 2] : 1;
        FloatBuffer all = logits.getFloatBuffer();
        float[] last = new float[vocab];
        all.position((rows - 1) * vocab);
        all.get(last);
        long[] counts = new long[0];
        if (routed) {
            OnnxTensor sc = tensor(result, "slice_counts"); // [num_routed, 1, seq] (every position, also lean)
            long[] scShape = sc.getInfo().getShape();
            LongBuffer buf = sc.getLongBuffer();
            counts = new long[(int) scShape[0]];
            for (int r = 0; r < counts.length; r++) {
                counts[r] = buf.get(r * seq + (seq - 1));
            }
        }
        return new StepOutput(last, counts);
    }

    private static OnnxTensor tensor(OrtSession.Result result, String name) throws ModelException {
        Optional<OnnxValue> found = result.get(name);
        if (!found.isPresent()) {
            throw new ModelException("model has no output '" + name + "'");
        }
        OnnxValue v = found.get();
        if (!(v instanceof OnnxTensor)) {
            throw new ModelException("model output " + name + " is not a tensor");
        }
        return (OnnxTensor) v;
    }

    private static OnnxTensor put(Map<String, OnnxTensor> map, String name, OnnxTensor t) {
        map.put(name, t);
        return t;
    }

    @Override
    public void reset() {
        if (cache != null) {
            cache.clear(); // keep the buffers: the attention mask tells GroupQueryAttention the past length
        }
        past.clear();
        if (lastResult != null) {
            lastResult.close();
            lastResult = null;
        }
        pastLength = 0;
    }

    @Override
    public void close() {
        reset();
        closeCacheTensors();
        try {
            session.close();
        } catch (OrtException e) {
            // the session is gone either way; nothing else holds native memory
        }
    }
}
