package org.distill4j.core.cuda;

/** A device allocation failed for lack of memory: says how much was asked for and how much is free. */
public final class DeviceOutOfMemoryException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final long requested;
    private final long free;

    public DeviceOutOfMemoryException(DeviceInfo device, long requested, long free, long total) {
        super(String.format("out of device memory on %s: asked for %,d bytes, %,d bytes free of %,d", device.name(), requested, free, total));
        this.requested = requested;
        this.free = free;
    }

    public long requested() { return requested; }

    public long free() { return free; }
}
