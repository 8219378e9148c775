package com.mbqonnx.core;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.io.File;
import java.nio.LongBuffer;
import java.util.Collections;

/**
 * Tokenizer and detokenizer as onnxruntime-extensions models, made in Python by
 * tools/make_android_tokenizer.py: {@code tokenizer.onnx} ({@code HfJsonTokenizer}, string
 * {@code str [1]} → int64 {@code ids [1, n]}) and {@code detokenizer.onnx} ({@code BpeDecoder},
 * int64 {@code ids [n]} → string {@code str [1]}). The extensions' native library path comes from
 * {@code ai.onnxruntime.extensions.OrtxPackage.getLibraryPath()} on Android.
 */
public final class OrtxTokenizer implements TextCodec {
    private final OrtEnvironment env;
    private final OrtSession encoder;
    private final OrtSession decoder;

    public OrtxTokenizer(OrtEnvironment env, File tokenizerModel, File detokenizerModel, String extensionsLibrary)
            throws ModelException {
        this.env = env;
        this.encoder = open(env, tokenizerModel, extensionsLibrary);
        try {
            this.decoder = open(env, detokenizerModel, extensionsLibrary);
        } catch (ModelException e) {
            closeQuietly(encoder);
            throw e;
        }
    }

    private static OrtSession open(OrtEnvironment env, File model, String extensionsLibrary) throws ModelException {
        if (!model.isFile()) {
            throw new ModelException("tokenizer model not found: " + model.getAbsolutePath()
                    + " (make it with `python tools/make_android_tokenizer.py MODEL_DIR`)");
        }
        try (OrtSession.SessionOptions options = new OrtSession.SessionOptions()) {
            options.registerCustomOpLibrary(extensionsLibrary);
            return env.createSession(model.getAbsolutePath(), options);
        } catch (OrtException e) {
            throw new ModelException("cannot open tokenizer model " + model.getName() + ": " + e.getMessage(), e);
        }
    }

    @Override
    public long[] encode(String text) throws ModelException {
        try (OnnxTensor input = OnnxTensor.createTensor(env, new String[] {text}, new long[] {1});
             OrtSession.Result result = encoder.run(Collections.singletonMap("str", input))) {
            OnnxTensor ids = (OnnxTensor) result.get(0);
            LongBuffer buf = ids.getLongBuffer();
            long[] out = new long[buf.remaining()];
            buf.get(out);
            return out;
        } catch (OrtException e) {
            throw new ModelException("tokenizer failed: " + e.getMessage(), e);
        }
    }

    @Override
    public String decode(long[] ids) throws ModelException {
        if (ids.length == 0) {
            return "";
        }
        try (OnnxTensor input = OnnxTensor.createTensor(env, LongBuffer.wrap(ids), new long[] {ids.length});
             OrtSession.Result result = decoder.run(Collections.singletonMap("ids", input))) {
            OnnxValue value = result.get(0);
            Object strings = value.getValue();
            return strings instanceof String[] ? ((String[]) strings)[0] : String.valueOf(strings);
        } catch (OrtException e) {
            throw new ModelException("detokenizer failed: " + e.getMessage(), e);
        }
    }

    @Override
    public void close() {
        closeQuietly(encoder);
        closeQuietly(decoder);
    }

    private static void closeQuietly(OrtSession s) {
        try {
            s.close();
        } catch (OrtException e) {
            // nothing left to release
        }
    }
}
