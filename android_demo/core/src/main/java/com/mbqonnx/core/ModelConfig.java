package com.mbqonnx.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The parts of an exported model's {@code mbq_config.json} the app needs (format:
 * docs/architecture.md "Exported model dir"). Parsed with {@code org.json}, which Android provides.
 */
public final class ModelConfig {
    private final int[] sliceBits;
    private final int numLayers;
    private final int numKvHeads;
    private final int headDim;
    private final String customOpLibrary;
    private final List<Double> tableTaus;
    private final long[] eosTokenIds;
    private final String modelFile;

    ModelConfig(int[] sliceBits, int numLayers, int numKvHeads, int headDim, String customOpLibrary,
                List<Double> tableTaus, long[] eosTokenIds, String modelFile) {
        if (sliceBits.length == 0) {
            throw new IllegalArgumentException("slice_bits must name at least one slice");
        }
        int total = 0;
        for (int b : sliceBits) {
            if (b < 1 || b > 8) {
                throw new IllegalArgumentException("slice_bits entries must be in 1..8, got " + b);
            }
            total += b;
        }
        if (total > 8) {
            throw new IllegalArgumentException("slice_bits must sum to at most 8, got " + total);
        }
        this.sliceBits = sliceBits.clone();
        this.numLayers = numLayers;
        this.numKvHeads = numKvHeads;
        this.headDim = headDim;
        this.customOpLibrary = customOpLibrary;
        this.tableTaus = Collections.unmodifiableList(new ArrayList<>(tableTaus));
        this.eosTokenIds = eosTokenIds.clone();
        this.modelFile = modelFile;
    }

    /** Config with only slice bit widths (e.g. for stats); model geometry unknown (0). */
    public static ModelConfig ofSliceBits(int... sliceBits) {
        return new ModelConfig(sliceBits, 0, 0, 0, "", Collections.<Double>emptyList(), new long[0], "");
    }

    /** Reads and validates {@code mbq_config.json}. */
    public static ModelConfig load(File file) throws ModelException {
        if (!file.isFile()) {
            throw new ModelException("model config not found: " + file.getAbsolutePath()
                    + " (it is written by `python -m mbq_onnx.export` next to model.onnx)");
        }
        String text;
        try {
            text = new String(Files.readAllBytes(file.toPath()), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ModelException("cannot read model config " + file.getAbsolutePath() + ": " + e.getMessage(), e);
        }
        try {
            return parse(new JSONObject(text));
        } catch (JSONException | IllegalArgumentException e) {
            throw new ModelException("bad model config " + file.getAbsolutePath() + ": " + e.getMessage(), e);
        }
    }

    /** Parses the JSON object of {@code mbq_config.json}. */
    public static ModelConfig parse(JSONObject json) throws JSONException {
        JSONArray bitsJson = json.getJSONArray("slice_bits");
        int[] bits = new int[bitsJson.length()];
        for (int i = 0; i < bits.length; i++) {
            bits[i] = bitsJson.getInt(i);
        }
        List<Double> taus = new ArrayList<>();
        JSONArray table = json.optJSONArray("tau_table");
        if (table != null) {
            for (int i = 0; i < table.length(); i++) {
                taus.add(table.getJSONObject(i).getDouble("tau"));
            }
        }
        long[] eos = new long[0];
        JSONArray eosList = json.optJSONArray("eos_token_id");
        if (eosList != null) {
            eos = new long[eosList.length()];
            for (int i = 0; i < eos.length; i++) {
                eos[i] = eosList.getLong(i);
            }
        } else if (json.has("eos_token_id") && !json.isNull("eos_token_id")) {
            eos = new long[] {json.getLong("eos_token_id")};
        }
        String modelFile = json.optString("ort_model_file", "");
        if (modelFile.isEmpty()) {
            modelFile = json.optString("model_file", "");
        }
        return new ModelConfig(bits, json.optInt("num_layers", 0), json.optInt("num_kv_heads", 0),
                json.optInt("head_dim", 0), json.optString("custom_op_library", "libmbq_ops.so"), taus, eos,
                modelFile);
    }

    public int numSlices() {
        return sliceBits.length;
    }

    public int[] sliceBits() {
        return sliceBits.clone();
    }

    /**
     * Bits of a weight using {@code count} slices: {@code slice_bits[0] + … + slice_bits[count-1]};
     * the count is clipped to 1..S as the Python runtime does.
     */
    public int bitsForCount(long count) {
        long c = Math.min(Math.max(count, 1L), sliceBits.length);
        int sum = 0;
        for (int i = 0; i < c; i++) {
            sum += sliceBits[i];
        }
        return sum;
    }

    /** A step's average bits: the unweighted mean of {@code bits(count)} over all entries (NaN if none). */
    public double averageBits(long[] sliceCounts) {
        if (sliceCounts.length == 0) {
            return Double.NaN;
        }
        double sum = 0.0;
        for (long c : sliceCounts) {
            sum += bitsForCount(c);
        }
        return sum / sliceCounts.length;
    }

    public int numLayers() {
        return numLayers;
    }

    public int numKvHeads() {
        return numKvHeads;
    }

    public int headDim() {
        return headDim;
    }

    /** File name of the custom-op library (on Android it comes from the APK's native libs). */
    public String customOpLibrary() {
        return customOpLibrary;
    }

    /** Token ids that end generation ({@code eos_token_id}; may be empty). */
    public long[] eosTokenIds() {
        return eosTokenIds.clone();
    }

    /** The model file named by the config ({@code ort_model_file} or {@code model_file}); "" if none. */
    public String modelFile() {
        return modelFile;
    }

    /** τ values of the calibration {@code tau_table} (for the probe grid). */
    public List<Double> tableTaus() {
        return tableTaus;
    }
}
