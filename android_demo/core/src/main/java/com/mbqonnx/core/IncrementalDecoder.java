package com.mbqonnx.core;

import java.util.Arrays;

/**
 * Streams text while tokens arrive: decodes all ids so far and returns only the new suffix,
 * holding back output that ends in an incomplete UTF-8 sequence (decoded as U+FFFD).
 */
public final class IncrementalDecoder {
    private final TextCodec codec;
    private long[] ids = new long[16];
    private int count;
    private int emitted;

    public IncrementalDecoder(TextCodec codec) {
        this.codec = codec;
    }

    /** Adds {@code id} and returns the text it completes (possibly empty). */
    public String push(long id) throws ModelException {
        if (count == ids.length) {
            ids = Arrays.copyOf(ids, count * 2);
        }
        ids[count++] = id;
        String text = codec.decode(Arrays.copyOf(ids, count));
        if (text.endsWith("\uFFFD") || text.length() < emitted) {
            return "";
        }
        String fresh = text.substring(emitted);
        emitted = text.length();
        return fresh;
    }
}
