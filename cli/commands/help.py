# ruff: noqa: E501 - the help texts are quoted word for word, long lines included
"""`fim-help`: the help texts of every command (spec section 17, word for word).

Deliberate differences: the general help goes to stdout like the others
(FlatImage writes it to stderr, spec 18.1 item 17), and ``fim-overlay`` lists
``fimfs``, fim's own backend and the default. The general text also lists fim's own
``fim-update`` (delta updates), which ``fim-help update`` describes.
"""

from __future__ import annotations

from fim.app.log import UsageError

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

BANNER = "Flatimage - Portable Linux Applications\n"

GENERAL = """\
fim-help : See usage details for specified command
Usage: fim-help <cmd>
  <cmd> : Name of the command to display help details
Note: Available commands: fim-{bind,boot,casefold,desktop,env,exec,instance,layer,notify,overlay,perms,recipe,remote,root,unshare,update,version}
Example: fim-help bind
"""

TEXTS = {
    "bind": """\
fim-bind : Bind paths from the host to inside the container
Usage: fim-bind <add> <type> <src> <dst>
  <add> : Create a novel binding of type <type> from <src> to <dst>
  <type> : ro, rw, dev
  <src> : A file, directory, or device
  <dst> : A file, directory, or device
Usage: fim-bind <del> <index>
  <del> : Deletes a binding with the specified index
  <index> : Index of the binding to erase
Usage: fim-bind <list>
  <list> : Lists current bindings
""",
    "boot": """\
fim-boot : Configure the default startup command
Usage: fim-boot <set> <command> [args...]
  <set> : Execute <command> with optional [args] when FlatImage is launched
  <command> : Startup command
  <args...> : Arguments for the startup command
Example: fim-boot set echo test
Usage: fim-boot <show|clear>
  <show> : Displays the current startup command
  <clear> : Clears the set startup command
""",
    "casefold": """\
fim-casefold : Enables casefold for the filesystem (ignore case)
Usage: fim-casefold <on|off>
  <on> : Enables casefold
  <off> : Disables casefold
""",
    "desktop": """\
fim-desktop : Configure the desktop integration
Usage: fim-desktop <setup> <json-file>
  <setup> : Sets up the desktop integration with an input json file
  <json-file> : Path to the json file with the desktop configuration
Usage: fim-desktop <enable> [entry,mimetype,icon,none]
  <enable> : Enables the desktop integration selectively
  <entry> : Enables the start menu desktop entry
  <mimetype> : Enables the mimetype
  <icon> : Enables the icon for the file manager and desktop entry
  <none> : Disables desktop integrations
Usage: fim-desktop <clean>
  <clean> : Cleans the desktop integration files from XDG_DATA_HOME
Usage: fim-desktop <dump> <icon> <file>
  <dump> : Dumps the selected integration data
  <icon> : Dumps the desktop icon to a file
  <file> : Path to the icon file, the extension is appended automatically if not specified
Usage: fim-desktop <dump> <entry|mimetype>
  <dump> : Dumps the selected integration data
  <entry> : The desktop entry of the application
  <mimetype> : The mime type of the application
""",
    "env": """\
fim-env : Define environment variables in FlatImage
Usage: fim-env <add|set> <'key=value'...>
  <add> : Include a novel environment variable
  <set> : Redefines the environment variables as the input arguments
  <'key=value'...> : List of variables to add or set
Example: fim-env add 'APP_NAME=hello-world' 'HOME=/home/my-app'
Usage: fim-env <del> <keys...>
  <del> : Delete one or more environment variables
  <keys...> : List of variable names to delete
Example: fim-env del APP_NAME HOME
Usage: fim-env <list>
  <list> : Lists configured environment variables
Usage: fim-env <clear>
  <clear> : Clears configured environment variables
""",
    "exec": """\
fim-exec : Executes a command as a regular user
Usage: fim-exec <program> [args...]
  <program> : Name of the program to execute, it can be the name of a binary or the full path
  <args...> : Arguments for the executed program
Example: fim-exec echo -e "hello\\nworld"
""",
    "instance": """\
fim-instance : Manage running instances
Usage: fim-instance <exec> <id> [args...]
  <exec> : Run a command in a running instance
  <id> : ID of the instance in which to execute the command
  <args> : Arguments for the 'exec' command
Example: fim-instance exec 0 echo hello
Usage: fim-instance <list>
  <list> : Lists current instances
""",
    "layer": """\
fim-layer : Manage the layers of the current FlatImage
Usage: fim-layer <create> <in-dir> <out-file>
  <create> : Creates a novel layer from <in-dir> and save in <out-file>
  <in-dir> : Input directory to create a novel layer from
  <out-file> : Output file name of the layer file
Usage: fim-layer <add> <in-file>
  <add> : Includes the novel layer <in-file> in the image in the top of the layer stack
  <in-file> : Path to the layer file to include in the FlatImage
Usage: fim-layer <commit> <binary|layer|file> [path]
  <commit> : Compresses current changes into a layer
  <binary> : Appends the layer to the FlatImage binary
  <layer> : Saves the layer to $FIM_DIR_DATA/layers with auto-increment naming
  <file> : Saves the layer to the specified file path
  <path> : File path (required when using 'file' mode)
Usage: fim-layer <list>
  <list> : Lists all embedded and external layers in the format index:offset:size:path
""",
    "notify": """\
fim-notify : Notify with 'notify-send' when the program starts
Usage: fim-notify <on|off>
  <on> : Turns on notify-send to signal the application start
  <off> : Turns off notify-send to signal the application start
""",
    "overlay": """\
fim-overlay : Show or select the default overlay filesystem
Usage: fim-overlay <set> <fimfs|overlayfs|unionfs|bwrap>
  <set> : Sets the default overlay filesystem to use
  <fimfs> : Uses fim's in-process filesystem stack (the default)
  <overlayfs> : Uses 'fuse-overlayfs' as the overlay filesystem
  <unionfs> : Uses 'unionfs-fuse' as the overlay filesystem
  <bwrap> : Uses 'bubblewrap' native overlay options as the overlay filesystem
Usage: fim-overlay <show>
  <show> : Shows the current overlay filesystem
""",
    "perms": """\
fim-perms : Edit current permissions for the flatimage
Note: Permissions: all,audio,dbus_system,dbus_user,dev,gpu,home,input,media,network,optical,shm,udev,usb,wayland,xorg
Usage: fim-perms <add|del|set> <perms...>
  <add> : Allow one or more permissions
  <del> : Delete one or more permissions
  <set> : Replace all permissions with the specified set
  <perms...> : One or more permissions
Example: fim-perms add home,network,gpu
Example: fim-perms set wayland,audio,network
Note: The 'all' permission sets all available permissions and cannot be combined with other permissions
Usage: fim-perms <list|clear>
  <list> : Lists the current permissions
  <clear> : Clears all permissions
""",
    "recipe": """\
fim-recipe : Fetch, inspect, and install recipes from a remote repository
Usage: fim-recipe <fetch> <recipes>
  <fetch> : Download one or more recipes with their dependencies without installing packages
  <recipes> : Name(s) of the recipe(s) to download (comma-separated for multiple)
Note: Recipes and all dependencies are downloaded from URL/DISTRO/latest/<recipe>.json to path_dir_host_config/recipes/DISTRO/latest/<recipe>.json
Example: fim-recipe fetch gpu
Example: fim-recipe fetch gpu,audio,xorg
Usage: fim-recipe <info> <recipes>
  <info> : Display information about one or more locally cached recipes including dependencies
  <recipes> : Name(s) of the recipe(s) to inspect (comma-separated for multiple)
Example: fim-recipe info gpu
Example: fim-recipe info gpu,audio,xorg
Usage: fim-recipe <install> <recipes>
  <install> : Download recipes with dependencies, validate no cycles exist, and install all packages
  <recipes> : Name(s) of the recipe(s) to install (comma-separated for multiple)
Note: The remote URL must be configured using 'fim-remote set <url>'
Note: Dependencies are resolved recursively and cyclic dependencies are detected
Example: fim-recipe install gpu
Example: fim-recipe install gpu,audio,xorg
""",
    "remote": """\
fim-remote : Configure the remote URL for recipes
Usage: fim-remote <set> <url>
  <set> : Set the remote URL
  <url> : The remote URL to configure
Example: fim-remote set https://updates.example.com/repo
Usage: fim-remote <show>
  <show> : Display the current remote URL
Usage: fim-remote <clear>
  <clear> : Clear the configured remote URL
""",
    "root": """\
fim-root : Executes a command as the root user
Usage: fim-root <program> [args...]
  <program> : Name of the program to execute, it can be the name of a binary or the full path
  <args...> : Arguments for the executed program
Example: fim-root id -u
""",
    "unshare": """\
fim-unshare : Configure namespace unsharing options for isolation
Note: Unshare options: all,user,ipc,pid,net,uts,cgroup
Note: USER and CGROUP use '-try' variants in bubblewrap for permissiveness
Usage: fim-unshare <add|del|set> <options...>
  <add> : Enable one or more unshare options
  <del> : Remove one or more unshare options
  <set> : Replace all unshare options with the specified set
  <options...> : One or more unshare options (comma-separated)
Example: fim-unshare add ipc,pid
Example: fim-unshare set user,ipc,net
Note: The 'all' option enables all available unshare options and cannot be combined with others
Usage: fim-unshare <list|clear>
  <list> : Lists the current unshare options
  <clear> : Clears all unshare options
""",
    "update": """\
fim-update : Update the image from where its next version lives, fetching only what changed
Usage: fim-update <set> <url>
  <set> : Set the URL of the image's next version (its checksum is read from <url>.sha256sum)
  <url> : An http:// or https:// URL
Example: fim-update set https://example.com/app.flatimage
Usage: fim-update <show|clear>
  <show> : Display the update URL
  <clear> : Clear the update URL
Usage: fim-update <run>
  <run> : Fetch the parts of the new version this file does not hold, verify it, replace this file
Note: The data directory is kept; on any failure the image is left as it was
""",
    "version": """\
fim-version : Displays version information of FlatImage
Usage: fim-version <short|full|deps>
  <short> : Displays the version as a string
  <full> : Displays the version and build information in json
  <deps> : Displays dependencies metadata in json
""",
}


def run(ctx: Context, args: list[str]) -> int:
    """``fim-help [topic]``; words after the topic are ignored."""
    if not args:
        print(BANNER + GENERAL, end="")
        return 0
    text = TEXTS.get(args[0].lower())
    if text is None:
        raise UsageError(f"Invalid argument for help command: {args[0]}")
    print(BANNER + text, end="")
    return 0
