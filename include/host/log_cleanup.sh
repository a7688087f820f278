# Airlock log cleanup, run on a host by `bash -c "<this file>" log-cleanup ARGS...` over one
# SSH session (sent by airlock.tasks.log_cleanup; the command line is built and the output below
# read by airlock.core.log_cleanup). Every value arrives as a quoted argument; none is ever
# pasted into this text.
#
# Arguments: MODE (apply | dry-run | delete-archived), PARTIAL_PROC (refuse | allow),
#            OLD_GZ (delete | archive), COMPRESS_MINUTES, DELETE_MINUTES, SAMPLE_LIMIT,
#            PATTERN_COUNT, PATTERN..., then DIRECTORY... (apply, dry-run)
#            or DIRECTORY RELATIVE_PATH SHA256 [RELATIVE_PATH SHA256 ...] (delete-archived)
#
# For each directory, in one pass of find: delete the files matching a pattern + .gz last
# written more than DELETE_MINUTES ago, and gzip the regular files whose name matches a pattern
# (not already *.gz) last written more than COMPRESS_MINUTES ago. find -P never follows a
# symbolic link, -xdev never enters another filesystem, -type f touches only regular files; a
# directory that is, or lies behind, a symbolic link is refused. The walk is relative to the
# directory itself: the script enters it with cd -P, checks that the directory it is now in has
# exactly the configured path (pwd -P), and runs find -P . from there, so an ancestor swapped for
# a symbolic link after the check cannot redirect the walk (the shell holds the directory, not
# its path). Files a process holds open (seen through /proc/<pid>/fd) are reported and left
# alone; when /proc shows only part of the processes (or there is no /proc), open files cannot
# be told apart, and with PARTIAL_PROC=refuse an apply touches nothing (the "refused" record).
# gzip runs through -execdir: on the file's name inside the directory find itself traversed, so
# a parent directory swapped for a symbolic link after find checked it is never followed
# (-delete works the same way).
#
# With OLD_GZ=archive nothing is deleted by apply: every compressed file old enough to delete is
# listed (an "archive" record, none left out), so the caller can upload it and check the upload.
# MODE=delete-archived then deletes, in one directory, exactly the files the caller names with
# the SHA-256 of what it archived: each still found by the same test as a deletion (same walk,
# same ages, not held open), reached without following a link (each parent entered with cd -P,
# its real path checked), and hashed again just before it is removed; a file whose content
# changed is kept ("kept" record).
#
# Output, one record a line, fields separated by tabs (in paths, newline arrives as \001):
#   tools     <missing tools, comma separated>           (then exit 3)
#   open      <proc|partial|unchecked> <unreadable processes>
#             (partial with 0: /proc hides other users' processes, hidepid=2 or invisible)
#   refused   open-files     (apply with PARTIAL_PROC=refuse and a partial or unchecked /proc:
#                            nothing was touched, no dir record follows)
#   dir       <index> <ok|missing|symlink|not-directory|unreadable|too-broad>
#   file      <index> <compress|delete|open> <bytes> <path relative to the directory>
#   total     <index> <compress|delete|open|archive> <files> <bytes>
#   archive   <index> <bytes> <mtime, seconds since the epoch> <path>      (OLD_GZ=archive)
#   deleted   <index> <bytes> <path>                                       (delete-archived)
#   kept      <index> <changed|moved> <path>                               (delete-archived)
set -u
export LC_ALL=C
# find needs a working directory it may enter; the session's (the home) may not be one.
cd / || exit 1

mode=$1 partial_proc=$2 old_gz=$3 compress_minutes=$4 delete_minutes=$5 sample_limit=$6
pattern_count=$7
shift 7
patterns=("${@:1:pattern_count}")
shift "$pattern_count"
declare -A verified=() # delete-archived: relative path -> SHA-256 of the archived copy
if [[ $mode == delete-archived ]]; then
    directories=("$1")
    shift
    while (($# >= 2)); do
        verified[$1]=$2
        shift 2
    done
else
    directories=("$@")
fi

tools=(find gzip stat awk tr xargs sort)
[[ $old_gz == archive || $mode == delete-archived ]] && tools+=(sha256sum)
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]} == 0)) && ! find /dev/null -maxdepth 0 -printf '' >/dev/null 2>&1; then
    missing+=("GNU find")
fi
if ((${#missing[@]})); then
    printf 'tools\t%s\n' "$(IFS=,; echo "${missing[*]}")"
    exit 3
fi

# -name tests: the patterns as given, and the same + .gz for what is deleted.
log_names=() gz_names=()
for pattern in "${patterns[@]}"; do
    ((${#log_names[@]})) && log_names+=(-o) && gz_names+=(-o)
    log_names+=(-name "$pattern")
    gz_names+=(-name "$pattern.gz")
done

# Regular files held open by any process, as "device inode", from /proc/<pid>/fd.
open_files=()
if [[ -d /proc/self/fd ]]; then
    unreadable=0
    descriptors=()
    for fd_dir in /proc/[0-9]*/fd; do
        if [[ ! -r $fd_dir || ! -x $fd_dir ]]; then
            [[ -e $fd_dir ]] && unreadable=$((unreadable + 1)) # else the process just ended
            continue
        fi
        descriptors+=("$fd_dir"/*)
    done
    if ((${#descriptors[@]})); then
        mapfile -t open_files < <(
            printf '%s\0' "${descriptors[@]}" |
                xargs -0 stat -L -c '%d %i %F' 2>/dev/null |
                awk '$3 == "regular" { print $1, $2 }' | sort -u
        )
    fi
    # hidepid=2 (invisible) or ptraceable: other users' processes are missing, not unreadable.
    # PID 1 always exists, so not seeing it means processes are hidden; root sees them all, so a
    # hidepid mount counts only for others (as does a PID 1 run by this very user).
    hidden=0
    [[ -e /proc/1 ]] || hidden=1
    if ((EUID != 0)) && awk '$2 == "/proc" && $3 == "proc" && $4 ~ /(^|,)hidepid=(2|4|invisible|ptraceable)(,|$)/ { found = 1 }
            END { exit !found }' /proc/mounts 2>/dev/null; then
        hidden=1
    fi
    if ((unreadable || hidden)); then
        open_check=partial
    else
        open_check=proc
    fi
    printf 'open\t%s\t%d\n' "$open_check" "$unreadable"
else
    open_check=unchecked
    printf 'open\tunchecked\t0\n'
fi
if [[ $mode != dry-run && $open_check != proc && $partial_proc != allow ]]; then
    printf 'refused\topen-files\n'
    exit 0
fi

# Reads find's "<action>\t<bytes>\t<path>\0" records: up to sample_limit "file" lines per
# action, then a "total" line for each action.
summarize() { # index
    tr '\n\0' '\001\n' | awk -F '\t' -v index_="$1" -v limit="$sample_limit" '
        { files[$1]++; bytes[$1] += $2 }
        $1 == "archive" { printf "archive\t%s\t%s\t%s\t%s\n", index_, $2, $3,
                              substr($0, length($1) + length($2) + length($3) + 4); next }
        files[$1] <= limit {
              printf "file\t%s\t%s\t%s\t%s\n", index_, $1, $2, substr($0, length($1) + length($2) + 3) }
        END { split("open delete compress archive", actions, " ")
              for (i = 1; i <= 4; i++)
                  printf "total\t%s\t%s\t%d\t%.0f\n", index_, actions[i], files[actions[i]], bytes[actions[i]] }'
}

index=0
for directory in "${directories[@]}"; do
    cd / || exit 1
    if [[ $directory == / ]]; then
        status=too-broad
    elif [[ -L $directory ]]; then
        status=symlink
    elif [[ ! -e $directory ]]; then
        status=missing
    elif [[ ! -d $directory ]]; then
        status=not-directory
    elif ! cd -P -- "$directory" 2>/dev/null; then
        status=unreadable
    elif [[ "$(pwd -P)" != "${directory%/}" ]]; then
        status=symlink # it, or a component above it, is a link: the real path must be configured
    else
        status=ok # and this shell is in the directory checked: find walks it, not its path
    fi
    printf 'dir\t%d\t%s\n' "$index" "$status"
    if [[ $status != ok ]]; then
        index=$((index + 1))
        continue
    fi

    # Open files on this directory's filesystem (-xdev keeps find on it): reported, never touched.
    device=$(stat -c %d -- .)
    open_match=()
    for entry in "${open_files[@]}"; do
        [[ ${entry% *} == "$device" ]] || continue
        ((${#open_match[@]})) && open_match+=(-o)
        open_match+=(-inum "${entry#* }")
    done
    # -cmin +0: a .gz this very pass creates (its ctime is now) is not deleted by it; a log older
    # than both ages is compressed now and deleted by the next run, as the dry run says.
    delete_test=(-type f \( "${gz_names[@]}" \) -mmin "+$delete_minutes" -cmin +0)
    compress_test=(-type f \( "${log_names[@]}" \) ! -name '*.gz' -mmin "+$compress_minutes")
    if [[ $mode == delete-archived ]]; then
        # Only what find lists as deletable now, and only what the caller archived and names.
        top=$(pwd -P) not_open=()
        ((${#open_match[@]})) && not_open=(! \( "${open_match[@]}" \))
        find -P . -xdev "${not_open[@]}" "${delete_test[@]}" -printf '%P\0' </dev/null |
            while IFS= read -r -d '' relative; do
                expected=${verified[$relative]-}
                [[ -n $expected ]] || continue
                shown=${relative//$'\n'/$'\001'}
                parent=. name=$relative
                [[ $relative == */* ]] && parent=${relative%/*} name=${relative##*/}
                (
                    if [[ $parent != . ]]; then
                        cd -P -- "$parent" 2>/dev/null && [[ "$(pwd -P)" == "$top/$parent" ]] ||
                            { printf 'kept\t%d\tmoved\t%s\n' "$index" "$shown"; exit 0; }
                    fi
                    [[ -f ./$name && ! -L ./$name ]] || { printf 'kept\t%d\tmoved\t%s\n' "$index" "$shown"; exit 0; }
                    size=$(stat -c %s -- "./$name") || exit 0
                    actual=$(sha256sum <"./$name") || exit 0
                    if [[ ${actual%% *} != "$expected" ]]; then
                        printf 'kept\t%d\tchanged\t%s\n' "$index" "$shown"
                    elif rm -f -- "./$name"; then
                        printf 'deleted\t%d\t%s\t%s\n' "$index" "$size" "$shown"
                    fi
                )
            done
        index=$((index + 1))
        continue
    fi
    if [[ $mode == apply ]]; then
        delete_action=(-delete)
        # gzip keeps the mtime and refuses links, hard-linked files and existing .gz targets
        # (saying so on stderr); only the files it compressed are counted. -execdir: gzip gets
        # ./<name> and runs in the directory find traversed, never re-walking the full path.
        compress_action=(-execdir gzip -- {} \;)
    else
        delete_action=() compress_action=()
    fi
    delete_record='delete\t%s\t%P\0'
    if [[ $old_gz == archive ]]; then
        delete_action=() # the caller archives, checks, then deletes (MODE=delete-archived)
        delete_record='archive\t%s\t%T@\t%P\0'
    fi
    # One pass over the tree: each file is at most one of open, delete, compress.
    expression=()
    if ((${#open_match[@]})); then
        expression+=(\( \( "${open_match[@]}" \) \( \( "${delete_test[@]}" \) -o \( "${compress_test[@]}" \) \)
            -printf 'open\t%s\t%P\0' \) -o)
    fi
    expression+=(\( "${delete_test[@]}" "${delete_action[@]}" -printf "$delete_record" \) -o
        \( "${compress_test[@]}" "${compress_action[@]}" -printf 'compress\t%s\t%P\0' \))
    find -P . -xdev "${expression[@]}" </dev/null | summarize "$index"
    index=$((index + 1))
done
exit 0
