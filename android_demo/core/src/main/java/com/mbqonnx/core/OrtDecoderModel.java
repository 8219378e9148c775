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
 * (I/O: docs/architecture.md "Exported model dir"). The KV cache stays inside ORT tensors: the
 * {@code present.*} outputs of one step are fed unchanged as {@code past_key_values.*} of the next
 * (no copy through Java arrays); the first step feeds empty {@code [1, kv_heads, 0, head_dim]} pasts.
 */
public final class OrtDecoderModel implements DecoderModel {
    private final OrtEnvironment env;
    private final OrtSession session;
    private final List<String> pastNames = new ArrayList<>();
    private final List<String> presentNames = new ArrayList<>();
    private final boolean routed;
    private final int kvHeads;
    private final int headDim;
    private final Map<String, OnnxTensor> past = new HashMap<>();
    private OrtSession.Result lastResult;
    private int pastLength;

    /**
     * Opens {@code modelFile} with the custom-op library at {@code customOpLibrary} (an absolute
     * path; null for a model without {@code com.mbq} ops) and {@code threads} intra-op threads
     * (0 = ORT's default).
     */
    public OrtDecoderModel(OrtEnvironment env, File modelFile, String customOpLibrary, ModelConfig config,
                           int threads) throws ModelException {
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
        try {
            Map<String, NodeInfo> inputs = session.getInputInfo();
            for (int i = 0; inputs.containsKey("past_key_values." + i + ".key"); i++) {
                for (String kind : new String[] {"key", "value"}) {
                    pastNames.add("past_key_values." + i + "." + kind);
                    presentNames.add("present." + i + "." + kind);
                }
            }
            for (String required : new String[] {"input_ids", "attention_mask", "position_ids"}) {
                if (!inputs.containsKey(required)) {
                    throw new ModelException("model " + modelFile.getName() + " has no input '" + required
                            + "'; inputs are " + inputs.keySet());
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
        } catch (OrtException e) {
            close();
            throw new ModelException("cannot inspect model " + modelFile.getName() + ": " + e.getMessage(), e);
        } catch (ModelException e) {
            close();
            throw e;
        }
    }

    /** True when the graph takes {@code tau}/{@code force_slices} (a mixed-bit model). */
    public boolean isRouted() {
        return routed;
    }

    @Override
    public int pastLength() {
        return pastLength;
    }

    @Override
    public StepOutput step(long[] tokens, float tau, long forceSlices) throws ModelException {
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

    private StepOutput readOutputs(OrtSession.Result result, int seq) throws OrtException, ModelException {
        OnnxTensor logits = tensor(result, "logits");
        long[] shape = logits.getInfo().getShape();
        int vocab = (int) shape[shape.length - 1];
        FloatBuffer all = logits.getFloatBuffer();
        float[] last = new float[vocab];
        all.position((seq - 1) * vocab);
        all.get(last);
        long[] counts = new long[0];
        if (routed) {
            OnnxTensor sc = tensor(result, "slice_counts"); // [num_routed, 1, seq]
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
        try {
            session.close();
        } catch (OrtException e) {
            // the session is gone either way; nothing else holds native memory
        }
    }
}
