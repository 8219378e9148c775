package com.mbqonnx.core;

/** Called on the generating thread for every new token (a UI posts it to its own thread). */
public interface GenerationListener {
    /**
     * @param tokenId the new token
     * @param index   0 for the first token after the prompt, then 1, 2, …
     * @param used    the decision of the step that produced this token (the prefill's for index 0)
     * @param next    the controller's decision for the next step
     * @param stats   running statistics (decode steps only)
     */
    void onToken(int tokenId, int index, Decision used, Decision next, GenerationStats stats);
}
