package com.mbqonnx.core;

import java.util.Random;

/** Picks the next token from logits: greedy (argmax) or top-k sampling with temperature. */
public final class Sampler {
    private final int topK;
    private final double temperature;
    private final Random random;

    private Sampler(int topK, double temperature, long seed) {
        this.topK = topK;
        this.temperature = temperature;
        this.random = new Random(seed);
    }

    /** Argmax; ties go to the lowest token id (as numpy's argmax). */
    public static Sampler greedy() {
        return new Sampler(1, 1.0, 0L);
    }

    /** Samples among the {@code k} most likely tokens, softmax at {@code temperature}, seeded. */
    public static Sampler topK(int k, double temperature, long seed) {
        if (k < 1) {
            throw new IllegalArgumentException("top-k must be >= 1, got " + k);
        }
        if (!(Double.isFinite(temperature) && temperature > 0.0)) {
            throw new IllegalArgumentException("temperature must be a finite number > 0, got " + temperature);
        }
        return new Sampler(k, temperature, seed);
    }

    public boolean isGreedy() {
        return topK == 1;
    }

    /** The next token id. */
    public int sample(float[] logits) {
        if (topK == 1) {
            return argmax(logits);
        }
        int k = Math.min(topK, logits.length);
        int[] top = topIndices(logits, k);
        double max = logits[top[0]];
        double[] weights = new double[k];
        double total = 0.0;
        for (int i = 0; i < k; i++) {
            weights[i] = Math.exp((logits[top[i]] - max) / temperature);
            total += weights[i];
        }
        double u = random.nextDouble() * total;
        for (int i = 0; i < k; i++) {
            u -= weights[i];
            if (u < 0.0) {
                return top[i];
            }
        }
        return top[k - 1];
    }

    /** Index of the largest logit (first one on ties); NaN logits are an error. */
    public static int argmax(float[] logits) {
        int best = 0;
        for (int i = 0; i < logits.length; i++) {
            if (Float.isNaN(logits[i])) {
                throw new IllegalStateException("model returned NaN logits (token " + i + ")");
            }
            if (logits[i] > logits[best]) {
                best = i;
            }
        }
        return best;
    }

    /** The {@code k} largest logits' indices, largest first (ties: lower id first). */
    static int[] topIndices(float[] logits, int k) {
        int[] top = new int[k];
        int filled = 0;
        for (int i = 0; i < logits.length; i++) {
            if (Float.isNaN(logits[i])) {
                throw new IllegalStateException("model returned NaN logits (token " + i + ")");
            }
            if (filled == k && !(logits[i] > logits[top[k - 1]])) {
                continue;
            }
            int pos = filled < k ? filled++ : k - 1;
            while (pos > 0 && logits[i] > logits[top[pos - 1]]) {
                top[pos] = top[pos - 1];
                pos--;
            }
            top[pos] = i;
        }
        return top;
    }
}
