/*
 * An Isola plugin in C, written against the documented core ABI
 * (wit/core-abi.md) with no Isola SDK: only wasi-libc and the imports of
 * the module `isola:task`.
 *
 * Built as a WASI reactor (`-mexec-model=reactor`): it has no `main`; the
 * host calls `_initialize` once after instantiation (which runs the C
 * constructors below), then `isola_run` for each call.
 *
 * `isola_run` answers its input:
 *   - `calls`       -> how many times this instance's `isola_run` ran,
 *                      which shows whether the host kept the instance;
 *   - empty input   -> an error (`set-error`, status 1);
 *   - anything else -> the input upper-cased (ASCII letters only).
 *
 * Build (what `make c-guests` runs):
 *   clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra \
 *         -Werror -Wl,--strip-debug -o plugin.wasm plugin.c
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Imports of module `isola:task` (wit/core-abi.md). A pointer or a length
 * is an i32 on wasm32. */
#define ISOLA_IMPORT(name) \
    __attribute__((import_module("isola:task"), import_name(name)))

/* Length of the start input (the call's input), or -1 when there is none. */
ISOLA_IMPORT("input-len") int64_t isola_input_len(void);
/* Copies the whole start input to `ptr` (input-len bytes). */
ISOLA_IMPORT("input-read") void isola_input_read(uint8_t *ptr);
/* The call's output: the host copies `len` bytes at `ptr` at once. */
ISOLA_IMPORT("set-output") void isola_set_output(const uint8_t *ptr, int32_t len);
/* The call's error message (UTF-8). */
ISOLA_IMPORT("set-error") void isola_set_error(const char *ptr, int32_t len);

/* Set up by a constructor, that is by `_initialize`: if the host did not
 * call `_initialize`, this stays NULL and every call fails saying so. */
static uint8_t *upper_table;

/* Calls of `isola_run` on this instance. */
static unsigned calls;

__attribute__((constructor)) static void build_upper_table(void) {
    upper_table = malloc(256);
    if (upper_table == NULL) {
        return;
    }
    for (int c = 0; c < 256; c++) {
        upper_table[c] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 'a' + 'A') : (uint8_t)c;
    }
}

/* Writes `n` in decimal to `out` (at least 10 bytes); returns its length. */
static int32_t format_unsigned(unsigned n, char *out) {
    char digits[10];
    int32_t count = 0;
    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n != 0);
    for (int32_t i = 0; i < count; i++) {
        out[i] = digits[count - 1 - i];
    }
    return count;
}

static int32_t fail(const char *message) {
    isola_set_error(message, (int32_t)strlen(message));
    return 1;
}

/* The plugin entry: `() -> i32`. Returns 0 after `set-output`, non-zero
 * after `set-error`. */
__attribute__((export_name("isola_run"))) int32_t isola_run(void) {
    calls++;
    if (upper_table == NULL) {
        return fail("not initialised: the host did not call `_initialize`");
    }
    int64_t len = isola_input_len();
    if (len < 0) {
        return fail("no input");
    }
    if (len == 0) {
        return fail("empty input: nothing to upper-case");
    }
    uint8_t *input = malloc((size_t)len);
    if (input == NULL) {
        return fail("out of memory");
    }
    isola_input_read(input);

    static const char count_command[] = "calls";
    if ((size_t)len == sizeof count_command - 1 &&
        memcmp(input, count_command, (size_t)len) == 0) {
        char text[16];
        int32_t n = format_unsigned(calls, text);
        isola_set_output((const uint8_t *)text, n);
        free(input);
        return 0;
    }

    for (int64_t i = 0; i < len; i++) {
        input[i] = upper_table[input[i]];
    }
    /* The host copies the output during the call: the buffer may be freed
     * right after. */
    isola_set_output(input, (int32_t)len);
    free(input);
    return 0;
}
