package com.mbqonnx.core;

import java.util.Arrays;

/**
 * The non-cache inputs of one step of an optimum {@code text-generation-with-past} graph (batch 1):
 * {@code input_ids [1, s]}, {@code attention_mask [1, past + s]} (all ones), and
 * {@code position_ids [1, s]} = past … past + s − 1. Pure Java, so the KV-cache feeding
 * convention is unit-tested here and shared by {@link OrtDecoderModel}.
 */
public final class DecoderFeeds {
    public final long[] inputIds;
    public final long[] attentionMask;
    public final long[] positionIds;
    public final int pastLength;

    private DecoderFeeds(long[] inputIds, long[] attentionMask, long[] positionIds, int pastLength) {
        this.inputIds = inputIds;
        this.attentionMask = attentionMask;
        this.positionIds = positionIds;
        this.pastLength = pastLength;
    }

    /** Feeds for {@code tokens} appended after {@code pastLength} cached tokens. */
    public static DecoderFeeds forStep(long[] tokens, int pastLength) {
        if (tokens == null || tokens.length == 0) {
            throw new IllegalArgumentException("a model step needs at least one input token");
        }
        if (pastLength < 0) {
            throw new IllegalArgumentException("past length must be >= 0, got " + pastLength);
        }
        long[] ids = Arrays.copyOf(tokens, tokens.length);
        long[] mask = new long[pastLength + tokens.length];
        Arrays.fill(mask, 1L);
        long[] pos = new long[tokens.length];
        for (int i = 0; i < pos.length; i++) {
            pos[i] = pastLength + i;
        }
        return new DecoderFeeds(ids, mask, pos, pastLength);
    }

    /** Shape {@code [1, s]} of input_ids / position_ids. */
    public long[] tokenShape() {
        return new long[] {1, inputIds.length};
    }

    /** Shape {@code [1, past + s]} of attention_mask. */
    public long[] maskShape() {
        return new long[] {1, attentionMask.length};
    }

    /** Shape of one past key/value tensor: {@code [1, kvHeads, past, headDim]}. */
    public long[] pastShape(int kvHeads, int headDim) {
        return new long[] {1, kvHeads, pastLength, headDim};
    }
}
