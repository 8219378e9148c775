package com.mbqonnx.core;

/** Text ↔ token ids (implemented by {@link OrtxTokenizer}). */
public interface TextCodec extends AutoCloseable {
    /** Token ids of {@code text} (no special tokens added). */
    long[] encode(String text) throws ModelException;

    /** Text of {@code ids}, special tokens skipped. */
    String decode(long[] ids) throws ModelException;

    @Override
    void close();
}
