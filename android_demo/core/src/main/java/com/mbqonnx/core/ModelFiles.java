package com.mbqonnx.core;

import java.io.File;

/**
 * The files of a model folder on the device: {@code model.ort} (or {@code model.onnx}),
 * {@code mbq_config.json}, and the onnxruntime-extensions tokenizer models {@code tokenizer.onnx}
 * and {@code detokenizer.onnx} (tools/make_android_tokenizer.py). {@link #locate} checks them all
 * and names every missing file in one message.
 */
public final class ModelFiles {
    public static final String CONFIG = "mbq_config.json";
    public static final String TOKENIZER = "tokenizer.onnx";
    public static final String DETOKENIZER = "detokenizer.onnx";

    public final File dir;
    public final File model;
    public final File config;
    public final File tokenizer;
    public final File detokenizer;

    private ModelFiles(File dir, File model) {
        this.dir = dir;
        this.model = model;
        this.config = new File(dir, CONFIG);
        this.tokenizer = new File(dir, TOKENIZER);
        this.detokenizer = new File(dir, DETOKENIZER);
    }

    /** Checks that {@code dir} holds a complete model; throws a message listing what is missing. */
    public static ModelFiles locate(File dir) throws ModelException {
        if (dir == null || !dir.isDirectory()) {
            throw new ModelException("model folder not found: " + (dir == null ? "(none chosen)" : dir.getAbsolutePath())
                    + ". Push an exported model folder with adb (see android_demo/README.md) or pick one.");
        }
        File model = null;
        for (String name : new String[] {"model.ort", "model.onnx"}) {
            if (model == null && new File(dir, name).isFile()) {
                model = new File(dir, name);
            }
        }
        ModelFiles files = new ModelFiles(dir, model == null ? new File(dir, "model.ort") : model);
        StringBuilder missing = new StringBuilder();
        if (model == null) {
            missing.append(" model.ort (or model.onnx)");
        }
        for (File f : new File[] {files.config, files.tokenizer, files.detokenizer}) {
            if (!f.isFile()) {
                missing.append(' ').append(f.getName());
            }
        }
        if (missing.length() > 0) {
            throw new ModelException("model folder " + dir.getAbsolutePath() + " is missing:" + missing
                    + ". Export with `python -m mbq_onnx.export ... --ort` and add the tokenizer models with"
                    + " `python tools/make_android_tokenizer.py`.");
        }
        return files;
    }
}
