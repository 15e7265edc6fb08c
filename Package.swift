// swift-tools-version:6.1
//
// sevpeb: page-encryption bitmap tracker + migration section, Swift with a C ABI.
//
// Builds two ways from the same sources:
//   swift build / swift test          ordinary Swift (tests, CLI, benchmarks)
//   SEVPEB_EMBEDDED=1 swift build -c release --product SevPEB --scratch-path .build-embedded
//                                     Embedded Swift; `make` prelinks it into a
//                                     libc-only libsevpeb.a (see Makefile).
//
// Compilation conditions:
//   SEVPEB_EMBEDDED   (environment variable) build the library as Embedded Swift.
import PackageDescription

let embedded = Context.environment["SEVPEB_EMBEDDED"] != nil
let coreSettings: [SwiftSetting] = embedded
    ? [.enableExperimentalFeature("Embedded"),
       .unsafeFlags(["-wmo", "-Xfrontend", "-function-sections"])]
    : []

// x86-64 hosts: POPCNT (x86-64-v2; every AMD SEV host, an EPYC, has it and
// BMI1/2 too). `nonzeroBitCount` then is one instruction instead of a dozen
// (the encoder's run count, chunk ranks, page counts; docs/PERFORMANCE.md).
// `-Xcc` because Swift takes its target features from the Clang importer.
#if arch(x86_64)
let cpuSettings: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-mpopcnt"])]
#else
let cpuSettings: [SwiftSetting] = []
#endif

// Strict memory safety (SE-0458): every expression that uses an unsafe
// construct is marked `unsafe` (and the site carries a `// SAFETY:` comment,
// checked by SafetyCommentTests); a new unmarked one is a compile error.
// Storage types that hold raw pointers are `@safe`: their users go through
// the marked expressions inside them.
let safetySettings: [SwiftSetting] = [.unsafeFlags(["-strict-memory-safety", "-Werror", "StrictMemorySafety"])]

var products: [Product] = [
    .library(name: "SevPEB", type: .static, targets: ["SevPEB"]),
]
var targets: [Target] = [
    .target(name: "CSevPEB"),        // include/sevpeb.h (symlinked): the public C ABI
    .target(name: "CSevPEBShims"),   // static inline libc wrappers (ioctl, errno, mutex)
    // XXH3 from Debian's libxxhash-dev, compiled inline (XXH_INLINE_ALL): optimised even in debug builds.
    .target(name: "CSevPEBHash", cSettings: [.unsafeFlags(["-O2"])]),
    .target(name: "SevPEB", dependencies: ["CSevPEB", "CSevPEBShims", "CSevPEBHash"],
            swiftSettings: coreSettings + cpuSettings + safetySettings),
]
var dependencies: [Package.Dependency] = []
if !embedded {
    dependencies += [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ]
    products += [.executable(name: "sevpeb", targets: ["SevPEBTool"])]
    targets += [
        // The CLI's logic (payload files, QEMU stream parser, SVG map), so tests can reach it.
        .target(name: "SevPEBInspect", dependencies: ["SevPEB"]),
        .executableTarget(name: "SevPEBTool", dependencies: [
            "SevPEB", "CSevPEB", "SevPEBInspect",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // One SplitMix64, reference model, typical guest, errno table and hex for every test.
        .target(name: "SevPEBTestSupport", dependencies: ["SevPEB", "SevPEBInspect"], path: "Tests/SevPEBTestSupport"),
        .testTarget(name: "SevPEBTests",
                    dependencies: ["SevPEB", "CSevPEB", "CSevPEBShims", "SevPEBInspect", "SevPEBTestSupport"]),
    ]
}

let package = Package(
    name: "sevpeb",
    products: products,
    dependencies: dependencies,
    targets: targets
)
