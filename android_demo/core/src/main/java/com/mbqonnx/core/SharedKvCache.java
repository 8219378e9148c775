package com.mbqonnx.core;

import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;

/**
 * The memory of a lean graph's KV cache (docs/export.md "Lean graph"; the Java twin of the Python
 * runtime's {@code SharedKVCache}): one direct, native-order {@link FloatBuffer} per layer and kind,
 * laid out {@code [1, kvHeads, capacity, headDim]}. {@link OrtDecoderModel} wraps each buffer in one
 * {@code OnnxTensor} (ORT uses a direct buffer's memory as is) and binds it both as input
 * {@code past_key_values.{i}.*} and as pinned output {@code present.{i}.*}, so GroupQueryAttention
 * appends in place and a decode step copies nothing.
 *
 * <p>When a step needs more than {@link #capacity()} positions, {@link #reserve} allocates
 * {@code max(needed, 2 × capacity)} positions and copies the first {@link #length()} positions of
 * every head (one copy per growth). Pure Java (no ORT), so the growth rule is unit-tested here.
 * Batch 1, like the rest of the core.
 */
public final class SharedKvCache {
    /** Positions a fresh cache holds before it first grows (as the Python runtime's default). */
    public static final int DEFAULT_CAPACITY = 256;

    private final int numBuffers;
    private final int kvHeads;
    private final int headDim;
    private FloatBuffer[] buffers;
    private int capacity;
    private int length;

    /**
     * A cache of {@code numBuffers} buffers (2 × layers: key0, value0, key1, …, or any fixed order the
     * caller keeps) with room for {@code capacity} positions.
     */
    public SharedKvCache(int numBuffers, int kvHeads, int headDim, int capacity) {
        if (numBuffers < 1) {
            throw new IllegalArgumentException("a KV cache needs >= 1 buffer, got " + numBuffers);
        }
        if (kvHeads < 1 || headDim < 1) {
            throw new IllegalArgumentException("KV heads and head size must be >= 1, got " + kvHeads + " and "
                    + headDim);
        }
        if (capacity < 1) {
            throw new IllegalArgumentException("KV-cache capacity must be >= 1 position, got " + capacity);
        }
        this.numBuffers = numBuffers;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.buffers = allocate(capacity);
        this.capacity = capacity;
    }

    /**
     * The capacity after a step that needs {@code needed} positions: unchanged when it fits, else
     * {@code max(needed, 2 × capacity)} (doubling keeps the number of copies logarithmic).
     */
    public static int grownCapacity(int capacity, int needed) {
        if (capacity < 1) {
            throw new IllegalArgumentException("KV-cache capacity must be >= 1 position, got " + capacity);
        }
        if (needed < 0) {
            throw new IllegalArgumentException("needed positions must be >= 0, got " + needed);
        }
        if (needed <= capacity) {
            return capacity;
        }
        return (int) Math.min(Integer.MAX_VALUE, Math.max((long) needed, 2L * capacity));
    }

    /**
     * Makes room for {@code needed} positions, keeping the first {@link #length()}. Returns true when
     * the buffers were replaced (tensors wrapping the old ones must then be re-created).
     */
    public boolean reserve(int needed) {
        int grown = grownCapacity(capacity, needed);
        if (grown == capacity) {
            return false;
        }
        FloatBuffer[] fresh = allocate(grown);
        int run = length * headDim; // the filled part of one head is contiguous
        for (int b = 0; b < numBuffers; b++) {
            for (int h = 0; h < kvHeads; h++) {
                FloatBuffer src = buffers[b].duplicate();
                FloatBuffer dst = fresh[b].duplicate();
                // Through Buffer: Android before API 28 lacks FloatBuffer's covariant limit/position.
                Buffer srcView = src;
                Buffer dstView = dst;
                int from = h * capacity * headDim;
                srcView.limit(from + run);
                srcView.position(from);
                dstView.position(h * grown * headDim);
                dst.put(src);
            }
        }
        buffers = fresh;
        capacity = grown;
        return true;
    }

    private FloatBuffer[] allocate(int positions) {
        long floats = (long) kvHeads * positions * headDim;
        if (floats * Float.BYTES > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("KV-cache buffer of " + kvHeads + " heads × " + positions
                    + " positions × " + headDim + " floats exceeds 2 GiB");
        }
        FloatBuffer[] out = new FloatBuffer[numBuffers];
        for (int b = 0; b < numBuffers; b++) {
            // Native order: ORT reads the direct buffer's memory as C floats.
            out[b] = ByteBuffer.allocateDirect((int) floats * Float.BYTES).order(ByteOrder.nativeOrder()).asFloatBuffer();
        }
        return out;
    }

    /** Marks {@code tokens} more positions as filled (after a step wrote them); must fit the capacity. */
    public void advance(int tokens) {
        if (tokens < 0 || (long) length + tokens > capacity) {
            throw new IllegalArgumentException("cannot advance the KV cache by " + tokens + " positions: length "
                    + length + ", capacity " + capacity + " (reserve first)");
        }
        length += tokens;
    }

    /** Forgets the cached positions (the buffers are kept; the next step overwrites them). */
    public void clear() {
        length = 0;
    }

    /** Number of buffers. */
    public int numBuffers() {
        return numBuffers;
    }

    /**
     * Buffer {@code index}: direct, native order, position 0, {@code kvHeads × capacity × headDim}
     * floats. Replaced by {@link #reserve} when the cache grows.
     */
    public FloatBuffer buffer(int index) {
        return buffers[index];
    }

    /** Shape of every buffer: {@code [1, kvHeads, capacity, headDim]}. */
    public long[] shape() {
        return new long[] {1, kvHeads, capacity, headDim};
    }

    /** Positions the buffers hold. */
    public int capacity() {
        return capacity;
    }

    /** Positions already filled. */
    public int length() {
        return length;
    }
}
