/* Limits on hostile input, enforced before the work is done, so that a kit
 * cannot make a reader allocate or loop without bound.  docs/kit-format.md
 * lists them; change both together. */
#pragma once

/* 2,000,000 artifacts of ~250 bytes of JSON each, with room for long
 * names: the manifest of the largest kit the format allows fits. */
#define STELLA_MANIFEST_MAX    (1u << 30)   /* bytes of manifest JSON */
#define STELLA_INDEX_MAX       (1u << 30)   /* bytes of the carried index (manifest/index) */
#define STELLA_SIG_MAX         (64u << 10)  /* bytes of the .sig member */
#define STELLA_SIG_LINES_MAX   64u          /* signature lines checked */
#define STELLA_JSON_DEPTH_MAX  16u          /* nesting of the manifest JSON */
#define STELLA_ARTIFACTS_MAX   2000000u     /* entries in a manifest */
#define STELLA_NAME_MAX        4096u        /* bytes of a full artifact name */
#define STELLA_COMPONENT_MAX   255u         /* bytes of one name component */
#define STELLA_DEPTH_MAX       64u          /* components in one name */
#define STELLA_SYMLINK_HOPS    40u          /* symlinks followed resolving one target */
#define STELLA_SYMLINK_STEPS   (8u << 20)   /* path components walked resolving them all, */
#define STELLA_SYMLINK_STEPS_EACH 16u       /* plus this many per symlink */
#define STELLA_TRUST_KEYS_MAX  256u         /* keys in one trust directory */
#define STELLA_KEY_FILE_MAX    (64u << 10)  /* bytes of one PEM key file */
