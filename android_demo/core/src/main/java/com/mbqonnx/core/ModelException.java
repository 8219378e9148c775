package com.mbqonnx.core;

/** A model, tokenizer or model-file problem, with a message that says what is wrong. */
public class ModelException extends Exception {
    private static final long serialVersionUID = 1L;

    public ModelException(String message) {
        super(message);
    }

    public ModelException(String message, Throwable cause) {
        super(message, cause);
    }
}
