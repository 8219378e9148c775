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
 * docs/architecture.md "Exported model dir"; the lean graph's keys: docs/export.md "Lean graph").
 * Parsed with {@code org.json}, which Android provides.
 */
public final class ModelConfig {
    /** {@code "graph"} of the traced graph (position ids, KV cache by concatenation); also when the key is absent. */
    public static final String GRAPH_DYNAMO = "dynamo";
    /** {@code "graph"} of the lean graph (GroupQueryAttention, one shared past/present buffer, logits_to_keep). */
    public static final String GRAPH_LEAN = "lean";
    /** {@code "kv_cache"} of a lean graph: past and present are one buffer, bound as input and output. */
    public static final String KV_SHARED_BUFFER = "shared-buffer";

    /** One routing decision per row of a lean graph: the linears it drives and their N·K weight counts. */
    public static final class RouterGroup {
        private final String name;
        private final List<String> linears;
        private final long[] weights;

        RouterGroup(String name, List<String> linears, long[] weights) {
            this.name = name;
            this.linears = Collections.unmodifiableList(new ArrayList<>(linears));
            this.weights = weights.clone();
        }

        public String name() {
            return name;
        }

        /** HF module names of the linears this group's decision drives. */
        public List<String> linears() {
            return linears;
        }

        /** N·K of each linear, in the order of {@link #linears()}. */
        public long[] weights() {
            return weights.clone();
        }
    }

    private final int[] sliceBits;
    private final int numLayers;
    private final int numKvHeads;
    private final int headDim;
    private final String customOpLibrary;
    private final List<Double> tableTaus;
    private final List<Double> tableBits;
    private final long[] eosTokenIds;
    private final String modelFile;
    private final String graph;
    private final String lmHead;
    private final List<RouterGroup> routerGroups;

    ModelConfig(int[] sliceBits, int numLayers, int numKvHeads, int headDim, String customOpLibrary,
                List<Double> tableTaus, List<Double> tableBits, long[] eosTokenIds, String modelFile) {
        this(sliceBits, numLayers, numKvHeads, headDim, customOpLibrary, tableTaus, tableBits, eosTokenIds,
                modelFile, GRAPH_DYNAMO, "", Collections.<RouterGroup>emptyList());
    }

    ModelConfig(int[] sliceBits, int numLayers, int numKvHeads, int headDim, String customOpLibrary,
                List<Double> tableTaus, List<Double> tableBits, long[] eosTokenIds, String modelFile, String graph,
                String lmHead, List<RouterGroup> routerGroups) {
        if (tableTaus.size() != tableBits.size()) {
            throw new IllegalArgumentException("tau_table: " + tableTaus.size() + " τ values but "
                    + tableBits.size() + " average bits");
        }
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
        this.tableBits = Collections.unmodifiableList(new ArrayList<>(tableBits));
        this.eosTokenIds = eosTokenIds.clone();
        this.modelFile = modelFile;
        if (!GRAPH_DYNAMO.equals(graph) && !GRAPH_LEAN.equals(graph)) {
            throw new IllegalArgumentException("graph must be \"" + GRAPH_LEAN + "\" or \"" + GRAPH_DYNAMO
                    + "\", got \"" + graph + "\"");
        }
        this.graph = graph;
        this.lmHead = lmHead;
        this.routerGroups = Collections.unmodifiableList(new ArrayList<>(routerGroups));
    }

    /** Config with only slice bit widths (e.g. for stats); model geometry unknown (0). */
    public static ModelConfig ofSliceBits(int... sliceBits) {
        return new ModelConfig(sliceBits, 0, 0, 0, "", Collections.<Double>emptyList(),
                Collections.<Double>emptyList(), new long[0], "");
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
        List<Double> tableBits = new ArrayList<>();
        JSONArray table = json.optJSONArray("tau_table");
        if (table != null) {
            for (int i = 0; i < table.length(); i++) {
                JSONObject row = table.getJSONObject(i);
                taus.add(row.getDouble("tau"));
                // bits per routed call (avg_bits in exports of older artifacts); NaN: the row has none
                tableBits.add(row.optDouble("avg_bits_per_call", row.optDouble("avg_bits", Double.NaN)));
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
        // isNull first: org.json's optString turns a JSON null ("ort_model_file": null) into "null".
        String modelFile = json.isNull("ort_model_file") ? "" : json.optString("ort_model_file", "");
        if (modelFile.isEmpty()) {
            modelFile = json.isNull("model_file") ? "" : json.optString("model_file", "");
        }
        String graph = optionalString(json, "graph", GRAPH_DYNAMO);
        if (!GRAPH_DYNAMO.equals(graph) && !GRAPH_LEAN.equals(graph)) {
            throw new JSONException("graph must be \"" + GRAPH_LEAN + "\" or \"" + GRAPH_DYNAMO + "\", got \""
                    + graph + "\"");
        }
        boolean lean = GRAPH_LEAN.equals(graph);
        String kvCache = optionalString(json, "kv_cache", null);
        if (lean && !KV_SHARED_BUFFER.equals(kvCache)) {
            throw new JSONException("a lean graph needs kv_cache \"" + KV_SHARED_BUFFER + "\", got "
                    + (kvCache == null ? "none" : "\"" + kvCache + "\""));
        }
        if (!lean && kvCache != null) {
            throw new JSONException("kv_cache \"" + kvCache + "\" belongs to a lean graph, but graph is \""
                    + graph + "\" (a dynamo graph's cache grows by concatenation and names no kv_cache)");
        }
        String lmHead = optionalString(json, "lm_head", "");
        if (json.has("lm_head") && lmHead.isEmpty()) {
            throw new JSONException("lm_head must name the head's precision (e.g. \"float\", \"8bit\"), got \"\"");
        }
        return new ModelConfig(bits, json.optInt("num_layers", 0), json.optInt("num_kv_heads", 0),
                json.optInt("head_dim", 0), json.optString("custom_op_library", "libmbq_ops.so"), taus,
                tableBits, eos, modelFile, graph, lmHead, routerGroups(json));
    }

    /** {@code json[key]} when it is a string, {@code fallback} when absent or null; an error otherwise. */
    private static String optionalString(JSONObject json, String key, String fallback) throws JSONException {
        if (!json.has(key) || json.isNull(key)) {
            return fallback;
        }
        Object v = json.get(key);
        if (!(v instanceof String)) {
            throw new JSONException(key + " must be a string, got " + v);
        }
        return (String) v;
    }

    private static List<RouterGroup> routerGroups(JSONObject json) throws JSONException {
        List<RouterGroup> groups = new ArrayList<>();
        if (!json.has("router_groups") || json.isNull("router_groups")) {
            return groups;
        }
        JSONArray list = json.optJSONArray("router_groups");
        if (list == null) {
            throw new JSONException("router_groups must be a list of {name, linears, weights}, got "
                    + json.get("router_groups"));
        }
        for (int i = 0; i < list.length(); i++) {
            JSONObject g = list.optJSONObject(i);
            String where = "router_groups[" + i + "]";
            if (g == null) {
                throw new JSONException(where + " must be an object {name, linears, weights}, got " + list.get(i));
            }
            String name = optionalString(g, "name", "");
            if (name.isEmpty()) {
                throw new JSONException(where + " has no name");
            }
            where += " (" + name + ")";
            JSONArray linearsJson = g.optJSONArray("linears");
            JSONArray weightsJson = g.optJSONArray("weights");
            if (linearsJson == null || linearsJson.length() == 0) {
                throw new JSONException(where + ": linears must be a non-empty list of linear names");
            }
            if (weightsJson == null || weightsJson.length() != linearsJson.length()) {
                throw new JSONException(where + ": weights must list one N·K count per linear ("
                        + linearsJson.length() + "), got " + g.opt("weights"));
            }
            List<String> linears = new ArrayList<>();
            long[] weights = new long[weightsJson.length()];
            for (int j = 0; j < weights.length; j++) {
                Object linear = linearsJson.get(j);
                if (!(linear instanceof String) || ((String) linear).isEmpty()) {
                    throw new JSONException(where + ": linears[" + j + "] must be a linear's name, got " + linear);
                }
                linears.add((String) linear);
                Object w = weightsJson.get(j);
                if (!(w instanceof Integer || w instanceof Long) || ((Number) w).longValue() < 1) {
                    throw new JSONException(where + ": weights[" + j + "] must be a positive integer, got " + w);
                }
                weights[j] = ((Number) w).longValue();
            }
            groups.add(new RouterGroup(name, linears, weights));
        }
        return groups;
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

    /** {@link #GRAPH_LEAN} or {@link #GRAPH_DYNAMO} ({@code "graph"}; dynamo when the key is absent). */
    public String graph() {
        return graph;
    }

    /**
     * True for a lean graph: its KV cache is one preallocated buffer per layer and kind, fed as
     * {@code past_key_values.*} and pinned as {@code present.*} ({@code "kv_cache": "shared-buffer"}).
     */
    public boolean isLeanGraph() {
        return GRAPH_LEAN.equals(graph);
    }

    /** Precision of a lean graph's LM head ({@code "lm_head"}, e.g. "float", "8bit"); "" if not given. */
    public String lmHead() {
        return lmHead;
    }

    /**
     * A lean graph's router groups as the exporter listed them (per-linear routers: the order of
     * {@code slice_counts}' first axis); empty if none or not given.
     */
    public List<RouterGroup> routerGroups() {
        return routerGroups;
    }

    /** τ values of the calibration {@code tau_table} (for the probe grid). */
    public List<Double> tableTaus() {
        return tableTaus;
    }

    /** Average bits per routed call of each {@link #tableTaus()} row; NaN where the row has none. */
    public List<Double> tableBits() {
        return tableBits;
    }
}
