"""Strict JPEG checking: find corrupt entropy-coded data that decoders hide.

libjpeg (under Pillow and torchvision) reports damaged compressed data, e.g.
a file whose bytes were overwritten in the middle, only as *warnings*
("Corrupt JPEG data: premature end of data segment", "... extraneous bytes
before marker 0xd9", "... bad Huffman code"), and Pillow drops them: such a
file decodes to garbage pixels without any error.  :func:`jpeg_problem`
re-reads the entropy-coded data of a JPEG file the way the decoder does
(markers, Huffman tables, restart intervals, the coefficient layout of
sequential and progressive scans), without the dequantisation, inverse DCT
and colour conversion, and returns why the stream is corrupt:

* a Huffman code that is in none of the scan's tables;
* a scan (or restart interval) whose data ends before all its blocks are
  decoded, or that holds whole bytes after its last block (the decoder lost
  its place: the blocks after the damage are decoded from the wrong bits);
* a missing or out-of-order restart marker;
* a run of coefficients past the end of a block;
* a DC coefficient outside what any 8 x 8 block of pixels can give (the
  prediction drifting after the damage);
* a reserved marker code.

Valid files written by any conforming encoder pass (baseline, extended and
progressive Huffman JPEG, any sampling, restart intervals, greyscale, CMYK).
Files the checker does not model (arithmetic coding, lossless and
hierarchical JPEG, a height given by a DNL marker, missing tables) are
accepted as they are, and so are truncated files (Pillow decides on those,
see ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``).

The decoding loop is compiled with numba (a declared dependency) on
first use and cached on disk; it runs without the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["jpeg_problem"]

# Status codes of the compiled scan decoder.
_OK = 0
_BAD_CODE = 1
_PREMATURE = 2
_EXTRANEOUS = 3
_BAD_RESTART = 4
_OVERFLOW = 5
_DC_RANGE = 6
_TRUNCATED = 7  # the file ends inside the scan: Pillow's call, not ours

_MESSAGES = {
    _BAD_CODE: "bad Huffman code",
    _PREMATURE: "premature end of data segment",
    _EXTRANEOUS: "extraneous bytes before marker",
    _BAD_RESTART: "restart marker missing or out of order",
    _OVERFLOW: "coefficients past the end of a block",
    _DC_RANGE: "DC coefficient out of range",
}

_LOOKAHEAD = 9  # bits resolved by one table look-up
_BUF_MASK = (1 << 56) - 1  # the bit buffer holds at most 56 bits

# Start-of-frame markers: Huffman-coded sequential and progressive frames are
# checked, the others (lossless, hierarchical, arithmetic coding) are not.
# Any other marker with a length field (APPn, COM, DNL, DAC...) is skipped.
_SOF_SEQUENTIAL = (0xC0, 0xC1)
_SOF_PROGRESSIVE = 0xC2
_SOF_OTHER = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def _build_table(counts, symbols, is_dc):
    """Decoding arrays of one Huffman table, or None for a bogus table
    (libjpeg rejects those as a fatal error, so Pillow has raised already)."""
    maxcode = np.full(18, -1, dtype=np.int64)
    maxcode[17] = 1 << 30  # sentinel: ends the code search
    valoff = np.zeros(17, dtype=np.int64)
    look = np.zeros(1 << _LOOKAHEAD, dtype=np.int32)  # code length << 8 | symbol
    huffval = np.zeros(256, dtype=np.int32)
    if len(symbols) > 256 or sum(counts) != len(symbols):
        return None
    if is_dc and any(s > 15 for s in symbols):
        return None
    huffval[: len(symbols)] = symbols
    code, p = 0, 0
    for length in range(1, 17):
        n = counts[length - 1]
        if n:
            valoff[length] = p - code
            for _ in range(n):
                if length <= _LOOKAHEAD:
                    shift = _LOOKAHEAD - length
                    start = code << shift
                    look[start:start + (1 << shift)] = (length << 8) | symbols[p]
                code += 1
                p += 1
            maxcode[length] = code - 1
            if code > (1 << length):  # more codes than the length allows
                return None
        code <<= 1
    return maxcode, valoff, huffval, look


# numba is a declared dependency (setup.cfg): without it the checker would
# run in pure Python, hundreds of times slower, so it is imported plainly.
# No function here allocates, so none needs numba's reference counting
# (_nrt=False, as in numba's own allocation-free helpers): with it, every
# call, and every use of a function inlined by numba, counts references
# to each array argument, in the per-block loop (5 times slower).  The
# decoders below _scan are inlined into it by numba (calls to them made
# progressive scans 1.7 times slower), _fill and _decode by LLVM.
_jit = njit(nogil=True, cache=True, _nrt=False)
_jit_inline = njit(nogil=True, cache=True, _nrt=False, inline="always")


@_jit
def _fill(data, n, buf, cnt, pos, zeros, hit):
    """Top the bit buffer up to > 48 bits: real data up to the next marker,
    then zero bits (counted in ``zeros``), as libjpeg does."""
    while cnt <= 48:
        if hit == 0:
            if pos >= n - 1:  # the file ends: a marker can no longer follow
                hit = 2
                continue
            b = np.int64(data[pos])
            if b == 0xFF:
                if data[pos + 1] != 0:  # a marker (or fill bytes before one)
                    hit = 1
                    continue
                pos += 2
            else:
                pos += 1
            buf = ((buf << 8) | b) & _BUF_MASK
        else:
            buf = (buf << 8) & _BUF_MASK
            zeros += 8
        cnt += 8
    return buf, cnt, pos, zeros, hit


@_jit
def _decode(buf, cnt, t, maxcode, valoff, huffval, look):
    """One Huffman symbol of table ``t`` (the caller has >= 32 bits in the
    buffer): returns (symbol or -1 for a code in no table, bits left)."""
    entry = look[t, (buf >> (cnt - _LOOKAHEAD)) & ((1 << _LOOKAHEAD) - 1)]
    if entry:
        return np.int64(entry & 255), cnt - (entry >> 8)
    length = _LOOKAHEAD + 1
    code = (buf >> (cnt - length)) & ((1 << length) - 1)
    while code > maxcode[t, length]:
        length += 1
        if length > 16:
            return -1, cnt
        code = (buf >> (cnt - length)) & ((1 << length) - 1)
    return np.int64(huffval[t, (code + valoff[t, length]) & 255]), cnt - length


# The decoders below take the bit-reader state ``bits`` = (buf, cnt, pos,
# zeros, hit) (see _fill and _scan) and return it updated, after a status;
# ``tabs`` = (maxcode, valoff, huffval, look) are the stacked Huffman tables
# (see _stack_tables).

@_jit_inline
def _dc_coefficient(bits, t, ci, pred, q, bound, ah, al, tabs):
    """The DC coefficient of one block of component ``ci`` (the buffer holds
    >= 32 bits): a refinement bit, or a difference added to ``pred[ci]``
    whose dequantised value must stay within ``bound``."""
    maxcode, valoff, huffval, look = tabs
    buf, cnt, pos, zeros, hit = bits
    if ah != 0:  # DC refinement: one bit
        return _OK, (buf, cnt - 1, pos, zeros, hit)
    s, cnt = _decode(buf, cnt, t, maxcode, valoff, huffval, look)
    if s < 0:
        return _BAD_CODE, (buf, cnt, pos, zeros, hit)
    if s:
        cnt -= s
        r = (buf >> cnt) & ((1 << s) - 1)
        if r < (1 << (s - 1)):
            r = r - (1 << s) + 1
        pred[ci] += r
    if q > 0:
        value = (pred[ci] << al) * q
        if value > bound or value < -bound:
            return _DC_RANGE, (buf, cnt, pos, zeros, hit)
    return _OK, (buf, cnt, pos, zeros, hit)


@_jit_inline
def _sequential_ac(data, n, bits, t, tabs):
    """The 63 AC coefficients of one block of a sequential scan."""
    maxcode, valoff, huffval, look = tabs
    buf, cnt, pos, zeros, hit = bits
    status = _OK
    k = 1
    while k < 64:
        if cnt < 32:
            buf, cnt, pos, zeros, hit = _fill(data, n, buf, cnt, pos, zeros, hit)
        sym, cnt = _decode(buf, cnt, t, maxcode, valoff, huffval, look)
        if sym < 0:
            status = _BAD_CODE
            break
        r = sym >> 4
        s = sym & 15
        if s:
            k += r
            if k > 63:
                status = _OVERFLOW
                break
            cnt -= s
            k += 1
        elif r == 15:
            k += 16
        else:
            break
    return status, (buf, cnt, pos, zeros, hit)


@_jit_inline
def _progressive_ac_first(data, n, bits, t, ss, se, mask, eobrun, tabs):
    """Coefficients ss..se of one block (not in an end-of-band run) in a first
    progressive AC scan: returns (status, bits, mask of the nonzero
    coefficients, eobrun)."""
    maxcode, valoff, huffval, look = tabs
    buf, cnt, pos, zeros, hit = bits
    status = _OK
    k = ss
    while k <= se:
        if cnt < 32:
            buf, cnt, pos, zeros, hit = _fill(data, n, buf, cnt, pos, zeros, hit)
        sym, cnt = _decode(buf, cnt, t, maxcode, valoff, huffval, look)
        if sym < 0:
            status = _BAD_CODE
            break
        r = sym >> 4
        s = sym & 15
        if s:
            k += r
            if k > se:
                status = _OVERFLOW
                break
            cnt -= s
            mask |= np.int64(1) << k
            k += 1
        elif r == 15:
            k += 16
        else:
            eobrun = np.int64(1) << r
            if r:
                cnt -= r
                eobrun += (buf >> cnt) & ((1 << r) - 1)
            eobrun -= 1
            break
    return status, (buf, cnt, pos, zeros, hit), mask, eobrun


@_jit_inline
def _progressive_ac_refine(data, n, bits, t, ss, se, mask, eobrun, tabs):
    """Coefficients ss..se of one block in a progressive AC refinement scan:
    new coefficients, then a correction bit per already nonzero one."""
    maxcode, valoff, huffval, look = tabs
    buf, cnt, pos, zeros, hit = bits
    status = _OK
    k = ss
    if eobrun == 0:
        while k <= se:
            if cnt < 32:
                buf, cnt, pos, zeros, hit = _fill(data, n, buf, cnt, pos, zeros, hit)
            sym, cnt = _decode(buf, cnt, t, maxcode, valoff, huffval, look)
            if sym < 0:
                status = _BAD_CODE
                break
            r = sym >> 4
            s = sym & 15
            if s:
                if s != 1:
                    status = _BAD_CODE
                    break
                cnt -= 1  # sign
            elif r != 15:
                eobrun = np.int64(1) << r
                if r:
                    cnt -= r
                    eobrun += (buf >> cnt) & ((1 << r) - 1)
                break
            while k <= se:  # correction bits of nonzero ones
                if (mask >> k) & 1:
                    if cnt < 32:
                        buf, cnt, pos, zeros, hit = _fill(data, n, buf, cnt, pos, zeros, hit)
                    cnt -= 1
                else:
                    if r == 0:
                        break
                    r -= 1
                k += 1
            if s:
                if k > se:
                    status = _OVERFLOW
                    break
                mask |= np.int64(1) << k
            k += 1
    if status == _OK and eobrun > 0:
        while k <= se:
            if (mask >> k) & 1:
                if cnt < 32:
                    buf, cnt, pos, zeros, hit = _fill(data, n, buf, cnt, pos, zeros, hit)
                cnt -= 1
            k += 1
        eobrun -= 1
    return status, (buf, cnt, pos, zeros, hit), mask, eobrun


@_jit_inline
def _interval(data, n, bits, first, last, eobrun, pred, masks, geom, comps, spec, tabs):
    """Decode MCUs (or blocks, in a one-component scan) first..last - 1,
    stopping at a problem or once the data has run out: returns
    (status, bits, eobrun)."""
    nblocks_w, nblocks_h, grid_w, hs, vs, mask_off = geom
    dc_t, ac_t, qdc, dc_bound = comps
    ss, se, ah, al, progressive = spec
    ns = hs.shape[0]
    for m in range(first, last):
        my = m // nblocks_w
        mx = m - my * nblocks_w
        for ci in range(ns):
            for _ in range(1 if ns == 1 else vs[ci] * hs[ci]):  # its blocks in the MCU
                buf, cnt, pos, zeros, hit = bits
                if cnt < 32:
                    bits = _fill(data, n, buf, cnt, pos, zeros, hit)
                if ss == 0:
                    status, bits = _dc_coefficient(bits, dc_t[ci], ci, pred, qdc[ci],
                                                   dc_bound[ci], ah, al, tabs)
                    if status == _OK and not progressive:
                        status, bits = _sequential_ac(data, n, bits, ac_t[ci], tabs)
                elif ah == 0 and eobrun > 0:  # in an end-of-band run
                    status = _OK
                    eobrun -= 1
                else:  # progressive AC: one component, one block per "MCU"
                    blk = mask_off[ci] + my * grid_w[ci] + mx
                    if ah == 0:
                        status, bits, mask, eobrun = _progressive_ac_first(
                            data, n, bits, ac_t[ci], ss, se, masks[blk], eobrun, tabs)
                    else:
                        status, bits, mask, eobrun = _progressive_ac_refine(
                            data, n, bits, ac_t[ci], ss, se, masks[blk], eobrun, tabs)
                    masks[blk] = mask
                if status != _OK:
                    return status, bits, eobrun
        if bits[1] < bits[3]:  # decoded from the zeros fed past the data
            break
    return _OK, bits, eobrun


@_jit_inline
def _end_of_interval(data, n, status, bits, last, next_rst):
    """Check how the data of a restart interval (the ``last`` one: the scan)
    ends: returns (status, position of the scan's closing marker, or of the
    data of the next interval after its restart marker ``next_rst``)."""
    buf, cnt, pos, zeros, hit = bits
    if cnt < zeros:  # decoded from the zeros fed past the data
        return (_TRUNCATED if hit == 2 else _PREMATURE), 0
    if status != _OK:
        return status, 0
    # the segment ends: less than a byte of padding may be left
    if cnt - zeros >= 8:
        return _EXTRANEOUS, 0
    if hit == 2 or pos >= n - 1:
        return _TRUNCATED, 0
    if data[pos] != 0xFF or data[pos + 1] == 0:
        return _EXTRANEOUS, 0
    while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes before the code
        pos += 1
    if pos + 1 >= n:
        return _TRUNCATED, 0
    code = np.int64(data[pos + 1])
    if last:
        return _OK, pos
    if code != 0xD0 + next_rst:
        return (_PREMATURE if code < 0xD0 or code > 0xD7 else _BAD_RESTART), 0
    return _OK, pos + 2


@_jit
def _scan(data, start, restart, pred, masks, geom, comps, spec, tabs):
    """Decode one scan: returns (status, position of the marker after it).

    ``pred``: room for the DC prediction of each component; ``masks``: the
    nonzero AC coefficients of each block of a progressive frame; ``geom`` =
    (blocks or MCUs per row, per column, and per component: block grid width,
    sampling factors, offset in ``masks``); ``comps`` = (DC and AC table
    slots, DC quantiser, DC bound) per component; ``spec`` = (ss, se, ah, al,
    progressive)."""
    n = data.shape[0]
    total = geom[0] * geom[1]  # blocks (one component) or MCUs
    # the bit reader: buffer, bits in it, position, zero bits fed after the
    # data ended, and 1 once a marker is reached, 2 the end of the file
    zero = np.int64(0)
    bits = (zero, zero, np.int64(start), zero, zero)
    pred[:] = 0
    eobrun = zero
    interval = restart if restart > 0 else total
    next_rst = 0
    done = 0
    while done < total:
        todo = min(interval, total - done)  # one restart interval
        status, bits, eobrun = _interval(data, n, bits, done, done + todo, eobrun, pred,
                                         masks, geom, comps, spec, tabs)
        done += todo
        status, pos = _end_of_interval(data, n, status, bits, done >= total, next_rst)
        if status != _OK or done >= total:
            return status, pos
        next_rst = (next_rst + 1) & 7
        bits = (zero, zero, np.int64(pos), zero, zero)
        pred[:] = 0
        eobrun = zero
    return _OK, bits[2]


def _u16(data, pos):
    return (data[pos] << 8) | data[pos + 1]


def jpeg_problem(data):
    """Why the entropy-coded data of a JPEG stream is corrupt, or None.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    problem : str or None
        For example ``"corrupt JPEG data in scan 1: premature end of data
        segment"``; None when the stream is valid, or of a kind the checker
        does not model (arithmetic, lossless or hierarchical coding), or
        truncated, or its headers are malformed (the decoder has reported
        those already).
    """
    try:
        return _problem(data)
    except (IndexError, ValueError, OverflowError):  # malformed headers: the decoder's call
        return None


class _Stream:
    """What the segments read so far have set up."""

    def __init__(self, data):
        self.buf = np.frombuffer(data, dtype=np.uint8)
        self.dc_tabs, self.ac_tabs, self.quant = {}, {}, {}
        self.frame = None
        self.restart = 0
        self.n_scan = 0
        self.masks = None


def _problem(data):
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    stream = _Stream(data)
    pos = 2
    while True:
        code, seg, after, problem = _next_segment(data, pos)
        if code is None:
            return problem
        if code == 0xDA:  # SOS
            after, problem = _read_scan(seg, after, stream)
            if after is None:
                return problem
        elif not _read_segment(code, seg, stream):
            return None
        pos = after


def _next_segment(data, pos):
    """The marker segment at ``pos``: (code, its payload, the position after
    it, None), or (None, None, None, why the stream ends there: a problem, or
    None for the end of the stream or a segment the checker does not read)."""
    n = len(data)
    while True:
        # next marker: 0xFF, optional 0xFF fill bytes, then the code
        if pos >= n:
            return None, None, None, None  # truncated (no EOI): Pillow's call
        if data[pos] != 0xFF:
            return None, None, None, (f"corrupt JPEG data: {_garbage_before(data, pos)} "
                                      "extraneous bytes before a marker")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return None, None, None, None
        code = data[pos]
        pos += 1
        if code == 0xD9:  # EOI
            return None, None, None, None
        if code == 0x01 or 0xD0 <= code <= 0xD7 or code == 0xD8:
            continue  # standalone markers
        if code == 0x00 or 0x02 <= code <= 0xBF:
            return None, None, None, f"corrupt JPEG data: reserved marker 0x{code:02x}"
        if pos + 2 > n:
            return None, None, None, None
        length = _u16(data, pos)
        if length < 2 or pos + length > n:
            return None, None, None, None
        return code, data[pos + 2:pos + length], pos + length, None


def _read_segment(code, seg, stream):
    """Take in a segment other than SOS: False if the checker stops there
    (a frame it does not model, malformed tables)."""
    if code in _SOF_OTHER:
        return False  # arithmetic, lossless or hierarchical: not modelled
    if code in _SOF_SEQUENTIAL or code == _SOF_PROGRESSIVE:
        if stream.frame is not None:
            return False
        stream.frame = _read_frame(seg, code == _SOF_PROGRESSIVE)
        if stream.frame is None:
            return False
        if stream.frame["progressive"]:
            stream.masks = np.zeros(stream.frame["blocks"], dtype=np.int64)
    elif code == 0xC4:  # DHT
        return _read_huffman_tables(seg, stream.dc_tabs, stream.ac_tabs)
    elif code == 0xDB:  # DQT
        return _read_quant_tables(seg, stream.quant)
    elif code == 0xDD:  # DRI
        if len(seg) < 2:
            return False
        stream.restart = _u16(seg, 0)
    return True  # any other segment (APPn, COM, DNL, DAC...) is skipped


def _read_frame(seg, progressive):
    """The frame (SOFn) header: sizes and the block layout of its components,
    or None when malformed or not modelled."""
    if len(seg) < 6:
        return None
    precision, height, width, nc = seg[0], _u16(seg, 1), _u16(seg, 3), seg[5]
    if height == 0 or width == 0 or nc == 0 or len(seg) < 6 + 3 * nc:
        return None  # height in a DNL marker, or malformed: not modelled
    comps = []
    for i in range(nc):
        cid, hv, tq = seg[6 + 3 * i], seg[7 + 3 * i], seg[8 + 3 * i]
        h, v = hv >> 4, hv & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            return None
        comps.append((cid, h, v, tq))
    hmax = max(c[1] for c in comps)
    vmax = max(c[2] for c in comps)
    mcux = -(-width // (8 * hmax))
    mcuy = -(-height // (8 * vmax))
    geo = []
    offset = 0
    for cid, h, v, tq in comps:
        cw = -(-width * h // hmax)
        ch = -(-height * v // vmax)
        geo.append({"id": cid, "h": h, "v": v, "tq": tq,
                    "bw": -(-cw // 8), "bh": -(-ch // 8),
                    "gw": mcux * h, "gh": mcuy * v, "off": offset})
        offset += mcux * h * mcuy * v
    return {"precision": precision, "progressive": progressive,
            "mcux": mcux, "mcuy": mcuy, "comps": geo, "blocks": offset}


def _read_huffman_tables(seg, dc_tabs, ac_tabs):
    """A DHT segment into ``dc_tabs`` / ``ac_tabs``: False when malformed."""
    p = 0
    while p < len(seg):
        if p + 17 > len(seg):
            return False
        tc, th = seg[p] >> 4, seg[p] & 15
        counts = list(seg[p + 1:p + 17])
        total = sum(counts)
        symbols = list(seg[p + 17:p + 17 + total])
        if tc > 1 or th > 3 or len(symbols) != total:
            return False
        table = _build_table(counts, symbols, tc == 0)
        if table is None:
            return False
        (dc_tabs if tc == 0 else ac_tabs)[th] = table
        p += 17 + total
    return True


def _read_quant_tables(seg, quant):
    """A DQT segment: the DC quantiser of each table into ``quant``; False
    when malformed."""
    p = 0
    while p < len(seg):
        pq, tq = seg[p] >> 4, seg[p] & 15
        size = 128 if pq else 64
        if p + 1 + size > len(seg) or tq > 3:
            return False
        quant[tq] = _u16(seg, p + 1) if pq else seg[p + 1]
        p += 1 + size
    return True


def _read_scan(seg, after, stream):
    """A scan (SOS header at ``seg``, entropy-coded data from ``after``):
    (position of the marker after it, None), or (None, why the checker stops
    there: a problem, or None for a truncated, malformed or unmodelled scan)."""
    frame = stream.frame
    header = _read_scan_header(seg, frame, stream.dc_tabs, stream.ac_tabs)
    if header is None:
        return None, None
    members, ss, se, ah, al = header
    status, end = _run_scan(stream.buf, after, frame, members, ss, se, ah, al,
                            stream.restart, stream.masks, stream.dc_tabs, stream.ac_tabs,
                            stream.quant)
    stream.n_scan += 1
    if status == _TRUNCATED:
        return None, None
    if status != _OK:
        return None, f"corrupt JPEG data in scan {stream.n_scan}: {_MESSAGES[status]}"
    return end, None


def _read_scan_header(seg, frame, dc_tabs, ac_tabs):
    """The components, tables and spectral selection of a scan, as
    (members, ss, se, ah, al), or None when malformed or not modelled."""
    if frame is None or len(seg) < 1:
        return None
    ns = seg[0]
    if ns < 1 or ns > 4 or len(seg) < 1 + 2 * ns + 3:
        return None
    ss, se = seg[1 + 2 * ns], seg[2 + 2 * ns]
    ah, al = seg[3 + 2 * ns] >> 4, seg[3 + 2 * ns] & 15
    by_id = {c["id"]: c for c in frame["comps"]}
    members = []
    for j in range(ns):
        cid, tables = seg[1 + 2 * j], seg[2 + 2 * j]
        if cid not in by_id:
            return None
        members.append((by_id[cid], tables >> 4, tables & 15))
    progressive = frame["progressive"]
    if not progressive:  # libjpeg ignores these fields of sequential scans
        ss, se, ah, al = 0, 63, 0, 0
    else:
        if ss > se or se > 63 or (ss == 0 and se != 0) or (ss > 0 and ns != 1):
            return None  # bogus progression: a fatal libjpeg error
    needs_dc = ss == 0 and ah == 0
    needs_ac = (not progressive) or ss > 0
    if needs_dc and any(td not in dc_tabs for _, td, _ in members):
        return None  # e.g. motion-JPEG default tables: not modelled
    if needs_ac and any(ta not in ac_tabs for _, _, ta in members):
        return None
    return members, ss, se, ah, al


def _garbage_before(data, pos):
    n = 0
    while pos < len(data) and data[pos] != 0xFF:
        pos += 1
        n += 1
    return n


def _stack_tables(tables):
    """One array per field over the 4 DC then 4 AC table slots."""
    empty = _build_table([0] * 16, [], False)
    fields = [[] for _ in range(4)]
    for slot in range(8):
        table = tables.get(slot, empty)
        for f, arr in zip(fields, table):
            f.append(arr)
    return tuple(np.ascontiguousarray(np.stack(f)) for f in fields)


def _run_scan(buf, start, frame, members, ss, se, ah, al, restart, masks, dc_tabs, ac_tabs,
              quant):
    ns = len(members)
    if ns == 1:
        c = members[0][0]
        nblocks_w, nblocks_h = c["bw"], c["bh"]
    else:
        nblocks_w, nblocks_h = frame["mcux"], frame["mcuy"]
    tables = {t: tab for t, tab in dc_tabs.items()}
    tables.update({4 + t: tab for t, tab in ac_tabs.items()})
    tabs = _stack_tables(tables)

    def per_member(value):
        return np.array([value(m) for m in members], dtype=np.int64)

    geom = (nblocks_w, nblocks_h, per_member(lambda m: m[0]["gw"]),
            per_member(lambda m: m[0]["h"]), per_member(lambda m: m[0]["v"]),
            per_member(lambda m: m[0]["off"]))
    qdc = per_member(lambda m: quant.get(m[0]["tq"], 0))
    # The DC coefficient of an 8 x 8 block is 8 x its mean level-shifted sample,
    # at most 1024 for 8-bit samples; quantisation rounds by Q / 2 and the point
    # transform of a progressive scan (Al) by 2**Al - 1 quantisation steps.
    level = 1024 << (max(frame["precision"], 8) - 8)
    dc_bound = np.array([level + ((1 << al) + 1) * q for q in qdc], dtype=np.int64)
    comps = (per_member(lambda m: m[1]), per_member(lambda m: 4 + m[2]), qdc, dc_bound)
    if masks is None:
        masks = np.zeros(1, dtype=np.int64)
    spec = (ss, se, ah, al, frame["progressive"])
    pred = np.zeros(ns, dtype=np.int64)
    status, end = _scan(buf, start, restart, pred, masks, geom, comps, spec, tabs)
    return int(status), int(end)
