# Shared helpers for the coldclone live-image scripts (sourced, POSIX sh).

# The kernel command line as the running system sees it (may include words that
# coldclone-fwcfg.service appended from QEMU's fw_cfg, see docs/livecd.md). The loops below
# stop at `--`: what follows is init's, never a kernel parameter (as `coldclone headless` reads it).
cc_cmdline() { cat /proc/cmdline; }

# cc_arg KEY -> value of KEY=value on the command line (last one wins); status 1 if absent.
cc_arg() {
    _v=""; _found=1
    for _w in $(cc_cmdline); do
        case "$_w" in
            --) break ;;
            "$1"=*) _v="${_w#*=}"; _found=0 ;;
            "$1") _v=""; _found=0 ;;
        esac
    done
    [ "$_found" = 0 ] && printf '%s' "$_v"
    return $_found
}

# cc_headless -> status 0 when the command line asks for an unattended run: any coldclone.*
# key except the smoke-test ones. Deliberately wide: a mistyped key (coldclone.sever=) must
# reach `coldclone headless`, which names it, rather than silently start the TUI.
# coldclone.tui wins over everything: the TUI starts, prefilled from the other keys.
cc_headless() {
    _unattended=1
    for _w in $(cc_cmdline); do
        case "$_w" in
            --) break ;;
            coldclone.tui|coldclone.tui=*) return 1 ;;
            coldclone.smoke|coldclone.smoke=*|coldclone.smoke_done=*) ;;
            coldclone.*) _unattended=0 ;;
        esac
    done
    return $_unattended
}

# The terminals a message for the operator must reach: tty1 (VGA/BMC virtual console)
# and every serial console named by console= on the command line.
cc_ttys() {
    _t="/dev/tty1"
    for _w in $(cc_cmdline); do
        case "$_w" in
            --) break ;;
            console=ttyS*|console=ttyAMA*|console=hvc*)
                _d="${_w#console=}"; _d="${_d%%,*}"
                case " $_t " in *" /dev/$_d "*) ;; *) _t="$_t /dev/$_d" ;; esac ;;
        esac
    done
    for _d in $_t; do [ -c "$_d" ] && printf '%s\n' "$_d"; done
}

# cc_say MESSAGE... -> every operator terminal, and the journal (stdout of the unit).
cc_say() {
    printf '%s\n' "$*"
    for _d in $(cc_ttys); do
        printf '\r\n%s\r\n' "$*" > "$_d" 2>/dev/null || true
    done
}

# cc_fanout LOG TTY... -> copy stdin, line by line, to stdout (the journal), LOG and each TTY.
# A terminal is reopened for every line: a long-lived fd (tee) goes dead for good when
# anything vhangups the tty (a getty starting or stopping), and the console would then show
# nothing for the rest of the run. Appending opens: harmless on a tty, testable on a file.
cc_fanout() {
    _log="$1"; shift
    while IFS= read -r _line || [ -n "$_line" ]; do
        printf '%s\n' "$_line"
        printf '%s\n' "$_line" >> "$_log"
        for _d in "$@"; do
            { printf '%s\r\n' "$_line" >> "$_d"; } 2>/dev/null || true
        done
    done
}
