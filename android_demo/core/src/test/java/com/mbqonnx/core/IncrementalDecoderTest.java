package com.mbqonnx.core;

import static org.junit.Assert.assertEquals;

import java.nio.charset.StandardCharsets;
import org.junit.Test;

/** Streaming text holds back incomplete UTF-8 characters (byte-level ids, as in byte-level BPE). */
public class IncrementalDecoderTest {
    /** Token id = one UTF-8 byte; decoding replaces an incomplete sequence with U+FFFD, as BpeDecoder does. */
    private static final class ByteCodec implements TextCodec {
        @Override
        public long[] encode(String text) {
            byte[] b = text.getBytes(StandardCharsets.UTF_8);
            long[] ids = new long[b.length];
            for (int i = 0; i < b.length; i++) {
                ids[i] = b[i] & 0xff;
            }
            return ids;
        }

        @Override
        public String decode(long[] ids) {
            byte[] b = new byte[ids.length];
            for (int i = 0; i < ids.length; i++) {
                b[i] = (byte) ids[i];
            }
            return new String(b, StandardCharsets.UTF_8);
        }

        @Override
        public void close() {
        }
    }

    @Test
    public void streamedPiecesJoinToTheFullTextAndNeverSplitACharacter() throws Exception {
        String text = "Paris — 生活 🙂 ok";
        ByteCodec codec = new ByteCodec();
        IncrementalDecoder stream = new IncrementalDecoder(codec);
        StringBuilder out = new StringBuilder();
        for (long id : codec.encode(text)) {
            String piece = stream.push(id);
            assertEquals("a piece must not contain U+FFFD", -1, piece.indexOf('\uFFFD'));
            out.append(piece);
        }
        assertEquals(text, out.toString());
    }
}
