package com.mbqonnx.core;

/**
 * A causal LM that keeps its own KV cache: each {@link #step} appends {@code tokens} after the
 * cached ones. The generation loop only talks to this interface, so its logic is testable without
 * a native runtime; {@link OrtDecoderModel} is the ONNX Runtime implementation.
 */
public interface DecoderModel extends AutoCloseable {
    /**
     * Runs {@code tokens} (the prompt on the first call, then one token per call) at router
     * threshold {@code tau} (or {@code forceSlices} > 0 slices for every linear).
     */
    StepOutput step(long[] tokens, float tau, long forceSlices) throws ModelException;

    /** Number of tokens in the KV cache. */
    int pastLength();

    /** Drops the KV cache (the next step starts a new sequence). */
    void reset();

    @Override
    void close();
}
