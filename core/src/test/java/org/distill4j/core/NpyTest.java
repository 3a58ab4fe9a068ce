package org.distill4j.core;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.distill4j.core.io.Npy;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class NpyTest {
    @TempDir
    Path tmp;

    @Test
    void roundTripsFloatsAndLongs() throws Exception {
        Path f = tmp.resolve("a.npy"), l = tmp.resolve("b.npy");
        float[] v = {1.5f, -2f, 3.25f, 0f, 7f, 8f};
        Npy.writeFloats(f, v, 2, 3);
        Npy.Array a = Npy.read(f);
        assertEquals(Npy.Type.F32, a.type());
        assertArrayEquals(new long[] {2, 3}, a.shape());
        assertArrayEquals(v, a.toFloats());
        Npy.writeLongs(l, new long[] {5, -100}, 2);
        assertArrayEquals(new long[] {5, -100}, Npy.read(l).toLongs("labels"));
    }

    /** A version 2 header (4-byte length), as numpy writes for very large headers. */
    @Test
    void readsVersion2Headers() throws Exception {
        String dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
        String header = dict + " ".repeat(64 - (12 + dict.length() + 1) % 64) + "\n";
        ByteBuffer b = ByteBuffer.allocate(12 + header.length() + 12).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0}).putInt(header.length()).put(header.getBytes(StandardCharsets.ISO_8859_1));
        b.putInt(1).putInt(-2).putInt(3);
        Path f = tmp.resolve("v2.npy");
        Files.write(f, b.array());
        assertArrayEquals(new long[] {1, -2, 3}, Npy.read(f).toLongs("x"));
    }

    @Test
    void badFilesNameTheFileAndTheField() throws Exception {
        Path good = tmp.resolve("good.npy");
        Npy.writeFloats(good, new float[] {1, 2, 3, 4}, 4);
        byte[] bytes = Files.readAllBytes(good);
        String text = new String(bytes, StandardCharsets.ISO_8859_1);
        check(tmp.resolve("magic.npy"), "hello world".getBytes(StandardCharsets.ISO_8859_1), "magic");
        check(tmp.resolve("fortran.npy"), text.replace("'fortran_order': False", "'fortran_order': True ").getBytes(StandardCharsets.ISO_8859_1), "fortran_order");
        check(tmp.resolve("descr.npy"), text.replace("'<f4'", "'>f4'").getBytes(StandardCharsets.ISO_8859_1), "descr");
        check(tmp.resolve("short.npy"), java.util.Arrays.copyOf(bytes, bytes.length - 4), "data bytes");
        check(tmp.resolve("shape.npy"), text.replace("(4,)", "(x,)").getBytes(StandardCharsets.ISO_8859_1), "shape");
        byte[] longHeader = bytes.clone();
        longHeader[8] = (byte) 0xff;
        longHeader[9] = (byte) 0x7f;
        check(tmp.resolve("header.npy"), longHeader, "header length");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Npy.read(tmp.resolve("none.npy")));
        assertTrue(e.getMessage().contains("no such file"), e.getMessage());
    }

    private static void check(Path f, byte[] content, String field) throws Exception {
        Files.write(f, content);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Npy.read(f));
        assertTrue(e.getMessage().startsWith(f.toString()) && e.getMessage().contains(field), e.getMessage());
    }
}
