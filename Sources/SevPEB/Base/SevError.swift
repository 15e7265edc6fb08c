import CSevPEBShims

/// A failure: a positive errno class (`code`) and a one-phrase detail naming
/// the field, the value read and the value expected.
///
/// Every public entry point maps it to `-code` and stores `message` as the
/// calling thread's `sevpeb_last_error()`. Built only on error paths, so the
/// success paths never allocate for it.
public struct SevError: Error {
    public var code: Int32
    public var message: String

    public init(_ code: Int32, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The value C callers see.
    public var negativeErrno: Int32 { -code }

    static func invalid(_ m: String) -> SevError { SevError(EINVAL, m) }
    static func outOfRange(_ m: String) -> SevError { SevError(ERANGE, m) }
    /// Out of memory. `message` must be a string literal (immortal: no
    /// allocation), so that reporting the failure cannot itself allocate;
    /// callers that add context to errors pass ENOMEM through unchanged.
    static func noMemory(_ message: String) -> SevError { SevError(ENOMEM, message) }
}

/// Hex text for messages: "0x1f". (The one `hex`: the library, the tool
/// and the tests use it.)
@inline(never)
public func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

/// The errno's symbolic name ("EILSEQ"), or nil for one this table lacks.
/// The one errno table: the library's messages, the tool and the tests name
/// errnos through it.
public func errnoSymbol(_ code: Int32) -> StaticString? {
    switch code < 0 ? -code : code {
    case EINVAL: return "EINVAL"
    case ERANGE: return "ERANGE"
    case EEXIST: return "EEXIST"
    case ENOENT: return "ENOENT"
    case ENOSPC: return "ENOSPC"
    case ENOMEM: return "ENOMEM"
    case EBUSY: return "EBUSY"
    case EAGAIN: return "EAGAIN"
    case EPROTO: return "EPROTO"
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT"
    case EBADMSG: return "EBADMSG"
    case EMSGSIZE: return "EMSGSIZE"
    case EREMCHG: return "EREMCHG"
    case EILSEQ: return "EILSEQ"
    case ENODATA: return "ENODATA"
    case EBADF: return "EBADF"
    case ENOTTY: return "ENOTTY"
    case EOPNOTSUPP: return "EOPNOTSUPP"
    case ENOSYS: return "ENOSYS"
    case EIO: return "EIO"
    case EFAULT: return "EFAULT"
    case EPERM: return "EPERM"
    case EINTR: return "EINTR"
    case ENXIO: return "ENXIO"
    default: return nil
    }
}

/// The errno's symbolic name: "EILSEQ", or "errno 99" for one the table lacks.
public func errnoName(_ code: Int32) -> String {
    if let s = errnoSymbol(code) { return "\(s)" }
    return "errno \(code < 0 ? -code : code)"
}

/// Error classes (for `sevpeb_strerror`): the errnos this library returns and
/// what each means here.
public enum ErrorClass {
    public static func name(_ err: Int32) -> StaticString {
        switch err < 0 ? -err : err {
        case 0: return "success"
        case EINVAL: return "invalid argument"
        case ERANGE: return "GFN range outside the memory layout"
        case EEXIST: return "slot overlaps an existing slot"
        case ENOENT: return "no such slot"
        case ENOSPC: return "buffer or table too small"
        case ENOMEM: return "out of memory"
        case EBUSY: return "a migration session is already active"
        case EAGAIN: return "guest not ready for migration"
        case EPROTO: return "no migration session active"
        case EPROTONOSUPPORT: return "unsupported stream format version"
        case EBADMSG: return "malformed stream record"
        case EMSGSIZE: return "stream length over its bound"
        case EREMCHG: return "stream layout differs from the destination's"
        case EILSEQ: return "stream digest or count mismatch"
        case ENODATA: return "stream truncated"
        case EBADF: return "bad file descriptor"
        case ENOTTY: return "ioctl not supported by this kernel"
        case EOPNOTSUPP: return "operation not supported"
        case ENOSYS: return "not implemented by this kernel"
        case EIO: return "I/O error"
        case EFAULT: return "bad address"
        case EPERM: return "operation not permitted"
        default: return "unknown error"
        }
    }
}
